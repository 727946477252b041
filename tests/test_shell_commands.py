"""The commands README.md and docs/quickstart.md show work when typed into a shell.

Each ``.venv/bin/python experiments/run.py ...`` line of their ```bash blocks runs
through ``bash`` from the repository root, with ``.venv/bin/python`` standing for the
interpreter running the tests (the one `make test` installed). Lines that would run a
whole experiment are cut to argument parsing: ``--help`` runs as typed; an experiment
command runs with a misspelt key appended, so it must get as far as the config check
and stop there with one error line. The override forms that docs/configuration.md
shows "typed in a shell" also go through ``bash`` into the config loader.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def bash_commands(page: Path) -> list[str]:
    """The ``.venv/bin/python experiments/...`` commands of a page's ```bash blocks, comments cut."""
    commands = []
    for block in _BASH.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith(".venv/bin/python experiments/"):
                commands.append(command)
    return commands


def shell(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``command`` through bash from the repository root, ``.venv/bin/python`` -> this Python."""
    command = command.replace(".venv/bin/python", shlex.quote(sys.executable), 1)
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
                               "TRANSFORMERS_OFFLINE": "1", "RECSIM_MM_CACHE": str(tmp_path / "cache")})


COMMANDS = sorted({c for page in (ROOT / "README.md", ROOT / "docs" / "quickstart.md") for c in bash_commands(page)})


def test_the_readme_and_quickstart_show_run_commands():
    assert any("--help" in c for c in COMMANDS) and any("preset=quick" in c for c in COMMANDS), COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_parses_in_a_fresh_shell(command, tmp_path):
    if "--help" in command:
        done = shell(command, tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: ") and "ppo.total_steps" in done.stdout
        return
    done = shell(f"{command} results_dir={tmp_path / 'results'} ppo.total_step=5", tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: unknown config key 'ppo.total_step'; did you mean 'ppo.total_steps'?")
    assert "Traceback" not in done.stderr


def shell_override_forms() -> list[str]:
    """The "typed in a shell" column of docs/configuration.md's override table."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text[text.index("| form | typed in a shell |"):].split("\n\n")[0]
    forms = []
    for row in table.splitlines()[2:]:
        forms += re.findall(r"`([^`]+)`", row.split("|")[2])
    return forms


@pytest.mark.slow
def test_documented_override_forms_survive_the_shell(tmp_path):
    forms = shell_override_forms()
    assert "'user_params={patience: 5}'" in forms and "\"name='2024'\"" in forms
    script = ("import json, sys; from experiments.config import load_config, to_dict; "
              "print(json.dumps(to_dict(load_config([a for a in sys.argv[1:] if not a.startswith('preset=')]))))")
    for form in forms:
        done = shell(f".venv/bin/python -c {shlex.quote(script)} {form}", tmp_path)
        assert done.returncode == 0, (form, done.stderr[-1500:])
        config = json.loads(done.stdout)
        if "user_params" in form:
            assert config["user_params"] == {"patience": 5}, form
        if "name=" in form:
            assert config["name"] == "2024", form
