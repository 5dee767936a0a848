"""Input at the edges of the calendar: a year-1 or year-9999 period in the re-report form or on
the command line, a date hierarchy on year 9999. Each answers with a message, never a 500 or a
traceback; and the SQLite lock files live in a private directory."""

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from billing.admin.forms import UTCDateTimeField
from billing.models import Meter, ReportRun
from billing.reporting import locks
from billing.reporting.periods import ReportInputError, validate_period
from tests.helpers import synced_customers, synced_meter

pytestmark = pytest.mark.django_db

CUSTOMERS = "/admin/billing/customer/"
REPORT_LOG = "/admin/billing/reportlog/"
NOW = datetime(2026, 11, 20, 13, 30, tzinfo=UTC)
HOURLY = Meter(openmeter_slug="api_calls", window="hour")
DAILY = Meter(openmeter_slug="storage", window="day")

EDGES = [
    (datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC)),
    (datetime(9999, 12, 30, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)),
    (datetime(9999, 12, 31, 22, tzinfo=UTC), datetime(9999, 12, 31, 23, tzinfo=UTC)),
    (datetime(1999, 12, 31, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC)),
    (datetime(2100, 1, 1, tzinfo=UTC), datetime(2100, 1, 2, tzinfo=UTC)),
    (datetime(1, 1, 1, tzinfo=UTC), NOW.replace(minute=0)),
]


@pytest.mark.parametrize(("start", "end"), EDGES)
@pytest.mark.parametrize("meters", [[HOURLY], [DAILY], [HOURLY, DAILY], []])
def test_periods_outside_the_calendar_are_refused_before_any_arithmetic(start, end, meters):
    with pytest.raises(ReportInputError, match="outside the range Meterbridge reports"):
        validate_period(start=start, end=end, meters=meters, now=NOW)


def test_the_first_and_last_moments_of_the_range_are_ordinary_input():
    # Inside the range: the ordinary reasons, not the range's.
    with pytest.raises(ReportInputError, match="35 days"):
        validate_period(
            start=datetime(2000, 1, 1, tzinfo=UTC),
            end=datetime(2000, 1, 2, tzinfo=UTC),
            meters=[DAILY],
            now=NOW,
        )
    with pytest.raises(ReportInputError, match="in the future"):
        validate_period(
            start=NOW.replace(minute=0) - timedelta(hours=1),
            end=datetime(2100, 1, 1, tzinfo=UTC),
            meters=[HOURLY],
            now=NOW,
        )


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00", "9999-12-31T23:00", "9999-12-31T23:59:59", "0001-01-01"]
)
def test_the_form_field_takes_any_calendar_moment_without_crashing(text):
    field = UTCDateTimeField(required=False)
    value = field.clean(text)
    assert value.tzinfo is not None
    assert field.prepare_value(value)


@pytest.fixture
def finance(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-12345-xyz")
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("0001-01-01T00:00", "0001-01-02T00:00"),
        ("9999-12-30T00:00", "9999-12-31T23:00"),
        ("0001-01-01T00:00", "9999-12-31T23:00"),
    ],
)
def test_the_re_report_form_answers_an_edge_period_with_its_error(
    fake_stripe, fake_openmeter, finance, start, end
):
    synced_meter(fake_openmeter)
    customer = synced_customers(["acme"])[0]
    response = finance.post(
        CUSTOMERS,
        {
            "action": "rereport_usage",
            "_selected_action": [str(customer.pk)],
            "step": "preview",
            "preset": "custom",
            "start": start,
            "end": end,
            "reason": "edge of the calendar",
        },
    )
    assert response.status_code == 200
    errors = " ".join(response.context["form"].non_field_errors())
    assert "outside the range Meterbridge reports" in errors
    assert not ReportRun.objects.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "0001-01-01", "--to", "0001-01-02"],
        ["--from", "9999-12-30", "--to", "9999-12-31T23:00:00Z"],
        ["--from", "9999-12-31T23:00:00+00:00", "--to", "9999-12-31T23:00:00-05:00"],
        ["--from", "0001-01-01T00:00:00+05:00", "--to", "2026-01-01"],
    ],
)
def test_report_usage_answers_an_edge_period_with_one_line_and_exit_2(
    fake_stripe, fake_openmeter, capsys, args
):
    synced_meter(fake_openmeter)
    with pytest.raises(SystemExit) as exit_info:
        call_command("report_usage", *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not ReportRun.objects.exists()


@pytest.mark.parametrize(
    "query",
    [
        "created_at__year=9999",
        "created_at__year=9999&created_at__month=12",
        "created_at__year=9999&created_at__month=12&created_at__day=31",
        "created_at__year=1",
        "created_at__year=0",
        "created_at__year=99999",
        "created_at__year=-5",
        "created_at__year=abc",
        "created_at__year=2026&created_at__month=13",
        "created_at__year=2026&created_at__month=2&created_at__day=30",
    ],
)
@pytest.mark.parametrize("page", [REPORT_LOG, REPORT_LOG + "export.csv"])
def test_the_date_hierarchy_and_export_answer_any_year(finance, query, page):
    response = finance.get(f"{page}?{query}")
    assert response.status_code in (200, 302), response.status_code
    if response.status_code == 302:
        assert response["Location"].endswith("?e=1")
    if page == REPORT_LOG and response.status_code == 200:
        assert b"0 report logs" in response.content or b"report log" in response.content


def test_the_run_list_answers_year_9999_too(finance):
    response = finance.get("/admin/billing/reportrun/?started_at__year=9999")
    assert response.status_code in (200, 302)


@pytest.fixture
def sqlite_only():
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("lock files are SQLite's")


def test_lock_files_live_in_a_private_directory_beside_the_database(sqlite_only, settings):
    from django.db import connection

    path = locks._lock_path(42)
    database = str(connection.settings_dict["NAME"])
    directory = os.path.dirname(path)
    assert directory == os.path.join(
        os.path.dirname(os.path.abspath(database)), ".meterbridge-locks"
    )
    with locks.meter_lock(42, wait=0) as held:
        assert held
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_lock_files_of_an_in_memory_database_go_to_a_private_runtime_directory(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    directory = locks.lock_directory(":memory:")
    assert os.path.dirname(directory) == str(tmp_path)
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(locks.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    os.mkdir(tmp_path / "tmp")
    fallback = locks.lock_directory("file:memdb1?mode=memory&cache=shared")
    assert fallback == str(tmp_path / "tmp" / f"meterbridge-{os.getuid()}")
    assert stat.S_IMODE(os.lstat(fallback).st_mode) == 0o700


def test_a_lock_directory_someone_else_prepared_is_not_used(tmp_path, monkeypatch):
    database = tmp_path / "db.sqlite3"
    planted = tmp_path / ".meterbridge-locks"
    os.symlink(tmp_path / "elsewhere", planted)
    os.mkdir(tmp_path / "elsewhere")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    directory = locks.lock_directory(str(database))
    assert directory.startswith(str(runtime))
    # A loose mode of our own directory is tightened.
    os.unlink(planted)
    os.mkdir(planted, 0o777)
    os.chmod(planted, 0o777)
    assert locks.lock_directory(str(database)) == str(planted)
    assert stat.S_IMODE(os.lstat(planted).st_mode) == 0o700
