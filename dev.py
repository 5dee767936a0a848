#!/usr/bin/env python3
"""The README's two commands, needing only Python 3.11+ and git.

    python3 dev.py serve   install, migrate, and run the admin, the scheduler and the worker
    python3 dev.py test    install with the test tools and run the whole test suite

Everything is installed into .venv beside this file (MB_VENV overrides the place).
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def ensure_venv(extras: str) -> None:
    """Create the virtualenv and install the project; skip pip when nothing changed."""
    if not PYTHON.exists():
        print(f"Creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    spec = (ROOT / "pyproject.toml").read_bytes() + extras.encode()
    stamp = VENV / ".meterbridge-installed"
    digest = hashlib.sha256(spec).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print("Installing dependencies (first run takes a minute) ...", flush=True)
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", target], check=True)
    stamp.write_text(digest)


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([str(PYTHON), "manage.py", *args], cwd=ROOT, env=env, check=True)


def serve(argv: list[str]) -> int:
    ensure_venv("")
    env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "true")}
    port = argv[0] if argv else os.environ.get("PORT", "8000")
    manage("migrate", "--no-input", env=env)
    manage("ensure_dev_admin", env=env)
    print(f"\nMeterbridge: http://127.0.0.1:{port}/admin/  (Ctrl-C stops it)\n", flush=True)
    cluster = subprocess.Popen([str(PYTHON), "manage.py", "qcluster"], cwd=ROOT, env=env)
    web = subprocess.Popen(
        [str(PYTHON), "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
    )
    try:
        while web.poll() is None and cluster.poll() is None:
            try:
                web.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (web, cluster):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (web, cluster):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


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
