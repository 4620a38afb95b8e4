import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from ksir.evaluate import evaluate_lm
from ksir.records import read_record, record_path


def test_train_job_learns_saves_hf_format_and_logs(trained_tiny):
    rec = trained_tiny.record
    m = rec["metrics"]
    assert rec["status"] == "done" and rec["job"] == "train" and rec["bits"] == 16
    # Starting loss of a 257-way model is ln(257) = 5.55 nats; 60 steps on real text must beat it clearly.
    assert m["val_loss"] < 0.8 * math.log(257)
    assert m["train_steps"] == 60 and m["train_tokens"] == 60 * 16 * 64
    assert rec["n_params"] > rec["n_params_nonembedding"] > 0
    assert rec["total_bits"] == 16 * rec["n_params"]
    # Other tools load the checkpoint unchanged.
    ckpt = Path(rec["checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.decode(tok("x = 1")["input_ids"]) == "x = 1"
    again = evaluate_lm(model.float(), trained_tiny.eval_blocks, batch_size=7)
    assert abs(again["val_loss"] - m["val_loss"]) < 1e-4
    # The record on disk is the one returned, and W&B wrote an offline run with the run key as id.
    cfg = trained_tiny.cfg
    assert read_record(record_path(cfg.paths.results, rec["run_key"]))["metrics"]["val_loss"] == m["val_loss"]
    runs = list(Path(cfg.paths.wandb, "wandb").glob(f"offline-run-*-{rec['run_key']}"))
    assert runs and list(runs[0].glob("*.wandb"))
    # with the installed packages, as W&B's own requirements.txt lists them (ksir reads them once per process)
    assert f"torch=={torch.__version__}" in (runs[0] / "files" / "requirements.txt").read_text().splitlines()


def test_evaluate_matches_direct_cross_entropy_and_ignores_batch_size(trained_tiny):
    model, blocks = trained_tiny.model, trained_tiny.eval_blocks[:5]
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1)).item()
    acc = (logits.argmax(-1) == blocks[:, 1:]).float().mean().item()
    for bs in (1, 2, 5):
        r = evaluate_lm(model, blocks, batch_size=bs)
        assert abs(r["val_loss"] - ce) < 1e-5 and abs(r["val_acc"] - acc) < 1e-6
        assert abs(r["val_ppl"] - math.exp(ce)) < 1e-3 * math.exp(ce)
        assert r["eval_tokens"] == blocks[:, 1:].numel()


def test_rerun_of_done_job_is_skipped(trained_tiny, capsys):
    from ksir.jobs import execute

    rec = execute(trained_tiny.cfg)
    assert rec["created"] == trained_tiny.record["created"]
    assert "skipped" in capsys.readouterr().out


def test_train_job_on_a_terminal_shows_lightnings_progress_bar(tmp_path, cache_dir):
    """On a terminal (a real pseudo-terminal here) a train job shows Lightning's bar; in logs, plain lines."""
    import os
    import pty
    import subprocess

    from .helpers import BIN, TINY

    master, slave = pty.openpty()
    proc = subprocess.Popen([str(BIN / "ksir-run"), "job=train", "model.size=xs", *TINY, "logger=none",
                             f"out_dir={tmp_path}", f"paths.cache={cache_dir}"], cwd=tmp_path, stdin=slave,
                            stdout=slave, stderr=slave, env={**os.environ, "WANDB_MODE": "offline"})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the job closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.wait(timeout=60) == 0, text[-2000:]
    assert "Epoch 0" in text and "60/60" in text and "it/s" in text, text[-2000:]  # tqdm or rich bar
    assert "train step" not in text, text[-2000:]  # the log lines are for logs

