"""The command lines: one console script `ffclip` (setup.cfg) with a sub-command per tool, the same as
`python -m ffclip_jax`; every sub-command's --help; only the chosen command's (and converter's) module is imported."""
import configparser
import os
import subprocess
import sys

import pytest

from ffclip_jax.cli import main as cli_main
from parity import ROOT

ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


def run(*args, timeout=120):
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def test_console_script_is_declared_and_installed():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    assert config["options.entry_points"]["console_scripts"].split() == ["ffclip", "=", "ffclip_jax.cli.main:run"]
    script = os.path.join(os.path.dirname(sys.executable), "ffclip")
    assert os.path.isfile(script), f"{script} missing: reinstall the package (make install-test)"
    r = run(script, "--version")
    assert r.returncode == 0 and r.stdout.startswith("ffclip-jax "), r.stderr


def test_dispatcher(capsys):
    r = run(sys.executable, "-m", "ffclip_jax", "--help")
    assert r.returncode == 0 and all(f"  {name} " in r.stdout for name in cli_main.COMMANDS), r.stdout
    assert cli_main.main([]) == 2 and "usage: ffclip COMMAND" in capsys.readouterr().err
    assert cli_main.main(["edti"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'edti'; expected one of edit, invert") and err.count("\n") == 1


@pytest.mark.parametrize("command", list(cli_main.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main.main([command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: ffclip {command}") and len(out.splitlines()) > 3, out


def test_only_the_chosen_converter_is_imported():
    probe = ("import sys\nfrom ffclip_jax.cli import main\ntry:\n    main.main(['convert', 'stylegan2', '--help'])\n"
             "except SystemExit:\n    pass\n"
             "print('transformers' in sys.modules, 'convert_weights.clip' in sys.modules)")
    r = run(sys.executable, "-c", probe)
    assert r.returncode == 0 and r.stdout.split()[-2:] == ["False", "False"], r.stdout + r.stderr
    assert "--input" in r.stdout and "--key" in r.stdout  # the stylegan2 converter's own options
    r = run(sys.executable, "-m", "convert_weights", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m convert_weights")
    assert "e4e encoder / pSp encoder (e4e_ffhq_encode.pt)" in r.stdout, r.stdout
