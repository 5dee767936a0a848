"""Closing billing periods: periods known locally (`periods`), the close on a draft invoice and the
record of the final one (`invoices`), usage that arrives after the invoice is final turned into
approved corrections (`corrections`), and the customer's projected invoice (`projection`)."""
