#!/usr/bin/env python3
"""The README's two commands, needing only Python 3.11+ and git.

    python3 dev.py serve   install, migrate, and run the admin, the scheduler and the worker
                           (without Stripe and OpenMeter settings: in demo mode, on local
                           emulators, with the seed's example and generated usage)
    python3 dev.py test    install with the test tools and run the whole test suite

Everything is installed into .venv beside this file (MB_VENV overrides the place).
"""

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
DEMO_STRIPE_PORT = int(os.environ.get("DEMO_STRIPE_PORT", "12111"))
DEMO_OPENMETER_PORT = int(os.environ.get("DEMO_OPENMETER_PORT", "8888"))


def ensure_venv(extras: str) -> None:
    """Create the virtualenv and install the project; skip pip when nothing changed. A venv
    installed with the test tools ("dev") also serves `serve`."""
    if not PYTHON.exists():
        print(f"Creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    spec = (ROOT / "pyproject.toml").read_bytes()
    for enough in (extras, "dev") if extras == "" else (extras,):
        stamp = VENV / f".meterbridge-installed-{enough or 'base'}"
        if stamp.exists() and stamp.read_text() == hashlib.sha256(spec).hexdigest():
            return
    print("Installing dependencies (first run takes a minute) ...", flush=True)
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", target], check=True)
    stamp = VENV / f".meterbridge-installed-{extras or 'base'}"
    stamp.write_text(hashlib.sha256(spec).hexdigest())


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([str(PYTHON), "manage.py", *args], cwd=ROOT, env=env, check=True)


class Stop(Exception):
    """SIGTERM or SIGHUP: stop everything, as Ctrl-C does."""


def _stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind: a port left in TIME_WAIT by a stopped server is free to reuse.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise SystemExit(f"{name} did not start (exit {proc.returncode}).")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not answer on port {port}.")


def dotenv_names() -> set[str]:
    """The variables a .env beside manage.py sets (the settings read it too)."""
    path = ROOT / ".env"
    if not path.exists():
        return set()
    names = set()
    for line in path.read_text().splitlines():
        name, eq, value = line.strip().removeprefix("export ").partition("=")
        if eq and value.strip().strip("'\"") and not name.startswith("#"):
            names.add(name.strip())
    return names


class Children:
    """The processes serve starts, each in its own process group, so that stopping one stops
    what it started too (qcluster's workers), and nothing outlives dev.py."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=os.name != "nt")
        self.procs.append((name, proc))
        return proc

    def ended(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop_all(self) -> None:
        for sig in (signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):
            for _, proc in reversed(self.procs):
                self._signal(proc, sig)
            deadline = time.monotonic() + 15
            for _, proc in self.procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            if all(proc.poll() is not None for _, proc in self.procs):
                break
        for _, proc in self.procs:  # workers a stopped leader left behind
            self._signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            if os.name == "nt":
                proc.terminate()
            else:
                os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def demo_env(env: dict[str, str], children: Children, *, port: int) -> dict[str, str]:
    """Start the Stripe and OpenMeter emulators (state kept in .demo/) and point the app at them;
    the Stripe emulator posts its events (meter error reports, invoices, subscription changes)
    to the app's webhook."""
    state = Path(env.get("DEMO_STATE_DIR", ROOT / ".demo"))
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    webhook_secret = "whsec_" + secrets.token_urlsafe(24)  # a new one each start
    stripe_url = f"http://127.0.0.1:{DEMO_STRIPE_PORT}"
    openmeter_url = f"http://127.0.0.1:{DEMO_OPENMETER_PORT}"
    stripe = children.start(
        "the Stripe emulator",
        [
            str(PYTHON),
            "-m",
            "emulators.stripe",
            "--port",
            str(DEMO_STRIPE_PORT),
            "--state",
            str(state / "stripe.state"),
            "--webhook",
            f"http://127.0.0.1:{port}/stripe/webhook/,thin",
            "--webhook",
            f"http://127.0.0.1:{port}/stripe/webhook/,snapshot",
            "--webhook-secret",
            webhook_secret,
        ],
        env,
    )
    openmeter = children.start(
        "the OpenMeter emulator",
        [
            str(PYTHON),
            "-m",
            "emulators.openmeter",
            "--port",
            str(DEMO_OPENMETER_PORT),
            "--meter",
            "tokens_total:SUM:tokens:$.tokens",
            "--meter",
            "active_users:UNIQUE_COUNT:tokens:$.user",
            "--state",
            str(state / "openmeter.state"),
        ],
        env,
    )
    wait_for_port(DEMO_STRIPE_PORT, stripe, "The Stripe emulator")
    wait_for_port(DEMO_OPENMETER_PORT, openmeter, "The OpenMeter emulator")
    return {
        **env,
        "METERBRIDGE_DEMO": "true",
        "STRIPE_API_KEY": "sk_test_meterbridge_demo",
        "STRIPE_API_BASE": stripe_url,
        "STRIPE_METER_EVENTS_API_BASE": stripe_url,
        "OPENMETER_URL": openmeter_url,
        "STRIPE_WEBHOOK_SECRET": webhook_secret,
        "REPORT_SCHEDULE_CRON": env.get("REPORT_SCHEDULE_CRON", "*/5 * * * *"),
    }


def serve(argv: list[str]) -> int:
    port = int(argv[0] if argv else os.environ.get("PORT", "8000"))
    configured = {"STRIPE_API_KEY", "OPENMETER_URL"} & (
        {k for k, v in os.environ.items() if v} | dotenv_names()
    )
    demo = not configured
    wanted = [(port, "the admin")]
    if demo:
        wanted += [
            (DEMO_STRIPE_PORT, "the Stripe emulator"),
            (DEMO_OPENMETER_PORT, "the OpenMeter emulator"),
        ]
    for busy, what in wanted:
        if port_busy(busy):
            print(
                f"Port {busy} (for {what}) is in use: is Meterbridge already running? "
                "Stop it, or choose another port: python3 dev.py serve 8080",
                file=sys.stderr,
            )
            return 1
    ensure_venv("")
    env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "true")}
    children = Children()
    signal.signal(signal.SIGTERM, _stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _stop)
    try:
        if demo:
            print(
                "Demo mode: no STRIPE_API_KEY or OPENMETER_URL set, so Stripe and OpenMeter are "
                "local emulators; nothing leaves this machine.",
                flush=True,
            )
            env = demo_env(env, children, port=port)
        manage("migrate", "--no-input", env=env)
        manage("ensure_dev_admin", env=env)
        if demo:
            manage("demo_setup", env=env)
            interval = env.get("DEMO_USAGE_INTERVAL", "5")
            generator = [str(PYTHON), "manage.py", "demo_usage", "--interval", interval]
            children.start("the usage generator", generator, env)
        children.start("the django-q2 cluster", [str(PYTHON), "manage.py", "qcluster"], env)
        children.start(
            "the web server",
            [str(PYTHON), "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            env,
        )
        print(f"\nMeterbridge: http://127.0.0.1:{port}/admin/  (Ctrl-C stops it)", flush=True)
        if demo:
            print(
                f"Stripe emulator (what Stripe holds): http://127.0.0.1:{DEMO_STRIPE_PORT}/",
                flush=True,
            )
        print(flush=True)
        while (ended := children.ended()) is None:
            time.sleep(0.5)
        name, code = ended
        print(f"{name} stopped (exit {code}); stopping the rest.", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stop):
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"{' '.join(exc.cmd[1:])} failed (exit {exc.returncode}).", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        children.stop_all()


def browser_available() -> bool:
    return shutil.which("chromium") is not None or Path("/usr/bin/chromium").exists()


def install_chromium() -> None:
    """The browser test drives Debian's chromium; install it where we may (root with apt)."""
    if browser_available() or os.name == "nt":
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("Installing Debian's chromium for the browser test ...", flush=True)
        quiet = {
            "stdout": subprocess.DEVNULL,
            "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        }
        subprocess.run(["apt-get", "update", "-qq"], check=False, **quiet)  # type: ignore[arg-type]
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, **quiet)  # type: ignore[arg-type]


def test(argv: list[str]) -> int:
    ensure_venv("dev")
    install_chromium()
    return subprocess.run([str(PYTHON), "-m", "pytest", *argv], cwd=ROOT).returncode


def main() -> int:
    commands = {"serve": serve, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
