import subprocess
import sys

from bioseq.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out


def test_version(capsys):
    import bioseq

    assert main(["--version"]) == 0
    assert bioseq.__version__ in capsys.readouterr().out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_help_runs_without_heavy_imports():
    code = ("import sys; from bioseq.cli import main; main(['--help']); "
            "print('lightning' in sys.modules, 'bioseq.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"
