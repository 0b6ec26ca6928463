"""Every command-line tool reports bad input the same way: ``prog: error: ...`` on stderr, exit status 2."""
import importlib

import pytest

TOOLS = {  # module -> (prog, extra arguments after the checkpoint)
    "stats": ("lslo-stats", []),
    "arch": ("lslo-arch", []),
    "merge": ("lslo-merge", ["-s", "en", "-t", "de", "-o", "{tmp}/out.pt"]),
    "export": ("lslo-export", ["-o", "{tmp}/out.safetensors"]),
    "export_hf": ("lslo-export-hf", ["-s", "en", "-t", "de", "--data", "{tmp}", "-o", "{tmp}/hf"]),
}


@pytest.mark.parametrize("module", sorted(TOOLS))
def test_a_missing_checkpoint_is_one_error_line_and_exit_2(module, tmp_path, capsys):
    prog, extra = TOOLS[module]
    main = importlib.import_module(f"fairseq_lslo.cli.{module}").main
    missing = str(tmp_path / "no_such.pt")
    assert main([missing, *[a.format(tmp=tmp_path) for a in extra]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{prog}: error: {missing}: no such checkpoint file"]


def test_the_runner_passes_bugs_through_and_names_input_errors(capsys):
    from fairseq_lslo.cli.runner import run_tool
    from fairseq_lslo.errors import LSLoConfigError

    def bad_input():
        raise LSLoConfigError("--flag x: expected y")

    assert run_tool("tool", bad_input) == 2
    assert capsys.readouterr().err == "tool: error: --flag x: expected y\n"
    assert run_tool("tool", lambda: None) == 0

    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_tool("tool", bug)


def test_data_preparation_tools_share_the_runner(tmp_path, capsys):
    from lslo_data_prep import epoch_size, langsets

    missing = tmp_path / "langs.tsv"
    assert langsets.main([str(missing)]) == 2
    assert capsys.readouterr().err == (f"lslo_data_prep.langsets: error: --langs: cannot read language set "
                                       f"{str(missing)!r}: No such file or directory\n")
    assert epoch_size.main([str(tmp_path / "no_data"), "--max-tokens", "100"]) == 2
    assert capsys.readouterr().err.startswith("lslo_data_prep.epoch_size: error: ")
