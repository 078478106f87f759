"""No token is written anywhere: anything token-shaped and the values of token-named keys and flags are redacted in
cards, results.json, args files and logs, for a token that is not HF_TOKEN; the CLI's --target reads safetensors
only."""

import json
import logging
import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_client import tiny_pipeline  # noqa: E402

from pdiff_hf.errors import HubError  # noqa: E402
from pdiff_hf.hub.secrets import install_log_redaction, is_secret_key, redact, redact_value  # noqa: E402
from pdiff_hf.utils.io_utils import write_json_atomic  # noqa: E402

torch.set_num_threads(1)
# someone else's token: not HF_TOKEN, not the saved login, not passed as token=
OTHER = "hf_" + "Zq7Lm2Xw9Rt4Vb8Nc1Kd6Jf3Hg5Ps0Ay"
PLAIN = "s3cr3t-value-42"  # not token-shaped: found only through the flag or key that names it


@pytest.fixture(autouse=True)
def unrelated_hf_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)


def all_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.suffix != ".safetensors")


@pytest.mark.parametrize(
    "text,kept",
    [
        (f"python train.py --hub_token {OTHER} --lr 3", "--lr 3"),
        (f"--hf-token={PLAIN} --x", "--x"),
        (f"token={PLAIN}", "token="),
        (f'{{"api_key": "{PLAIN}", "ae_token_size": 256}}', '"ae_token_size": 256'),
        (f"pushing with {OTHER} now", "pushing with"),
        (f"HF_TOKEN: {PLAIN}", "HF_TOKEN"),
    ],
)
def test_redact(text, kept):
    out = redact(text)
    assert OTHER not in out and PLAIN not in out and "***" in out and kept in out


def test_sizes_named_token_are_not_secrets():
    assert redact("ae_token_size=256 num_tokens=5 --token_size 64") == "ae_token_size=256 num_tokens=5 --token_size 64"
    assert [is_secret_key(k) for k in ("hub_token", "--hub-token", "HF_TOKEN", "password", "ae_token_size", "num_tokens")] == [
        True, True, True, True, False, False,
    ]  # fmt: skip


def test_args_file_and_results_json(tmp_path):
    args = {"hub_token": PLAIN, "argv": ["--hub_token", PLAIN, "--lr", "0.1"], "note": f"token {OTHER}",
            "ae_token_size": 256, "nested": {"api_key": PLAIN, "steps": 3}}  # fmt: skip
    write_json_atomic(tmp_path / "collect_args.json", args)
    text = (tmp_path / "collect_args.json").read_text()
    assert OTHER not in text and PLAIN not in text
    saved = json.loads(text)
    assert saved["argv"] == ["--hub_token", "***", "--lr", "0.1"] and saved["ae_token_size"] == 256
    assert saved["nested"] == {"api_key": "***", "steps": 3} and saved["hub_token"] == "***"
    assert redact_value({"token": None}) == {"token": None}


def test_card_and_results_of_a_saved_pipeline(tmp_path):
    pipe = tiny_pipeline()[0]
    training_args = {"command": f"train_ldm.py --hub_token {OTHER} --learning_rate 0.003", "learning_rate": 0.003,
                     "comment": f"login {PLAIN}", "password": PLAIN}  # fmt: skip
    results = {"test_accuracy": [0.5, 0.6], "command": f"pdiff-hf evaluate --token={PLAIN}"}
    pipe.save_pretrained(tmp_path / "pipe", training_args=training_args, results=results)
    text = all_text(tmp_path / "pipe")
    assert OTHER not in text and f"--token={PLAIN}" not in text
    assert "learning_rate" in (tmp_path / "pipe" / "README.md").read_text()


def test_log_records_are_redacted(caplog):
    factory = logging.getLogRecordFactory()
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent
        with caplog.at_level(logging.INFO, logger="pdiff_hf.test"):
            logging.getLogger("pdiff_hf.test").info("args: %s", f"--hub_token {PLAIN} {OTHER}")
            logging.getLogger("pdiff_hf.test").info(f"pushed with {OTHER}")
    finally:
        logging.setLogRecordFactory(factory)
    assert OTHER not in caplog.text and PLAIN not in caplog.text and caplog.text.count("***") >= 3


class _WritesMarker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('unpickled')",))


def test_cli_target_reads_safetensors_only(tmp_path, capsys):
    from pdiff_hf.cli import main
    from pdiff_hf.hub.validate import check_model_folder
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN

    target = tmp_path / "target"
    MNIST1DCNN(channels=4).save_pretrained(target)
    check_model_folder(target, "--target")
    (target / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "marker"
    (target / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_WritesMarker(str(marker))))
    with pytest.raises(HubError, match=r"--target: expected safetensors weights .*found \['config.json', 'diffusion_pytorch_model.bin'\]"):
        check_model_folder(target, "--target")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "ckpts").mkdir()
    code = main(["evaluate", "--pipeline", str(tmp_path / "pipe"), "--checkpoints", str(tmp_path / "ckpts"),
                 "--target", str(target), "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "expected safetensors weights" in capsys.readouterr().err
    assert not marker.exists()
