"""A wheel of cnncc holds every module and every template: a non-editable install (the README's
main command) finds them all, whatever a change added."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_module_and_template(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("cnncc-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"cnncc/{p.relative_to(ROOT / 'cnncc').as_posix()}" for p in (ROOT / "cnncc").rglob("*.py")}
    templates = {f"cnncc/templates/{p.relative_to(ROOT / 'templates').as_posix()}"
                 for p in (ROOT / "templates").rglob("*.j2")}
    assert modules - names == set(), "modules missing from the wheel (pyproject.toml's packages)"
    assert templates - names == set(), "templates missing from the wheel"
