import json

import pytest

from prunecast.cli import main

from .conftest import TTM_ID, requires_ttm


@requires_ttm
def test_evaluate_json_reports_metrics(capsys):
    assert main(["evaluate", "--model", TTM_ID, "--limit", "700", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["windows"] == 700
    assert 0.05 < result["mse"] < 2.0 and 0.05 < result["mae"] < 2.0
    assert result["horizon"] == 96 and result["context_length"] == 512


def test_evaluate_bad_data_is_a_message_not_a_traceback(tmp_path, small_ttm, capsys):
    small_ttm.model.save_pretrained(tmp_path / "m")
    code = main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path / "missing.csv"),
            "--horizon",
            "16",
        ]
    )
    assert code == 2
    assert "missing.csv: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["evaluate", "--horizon", "x"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit):
        main(argv)
