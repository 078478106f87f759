"""What the tests of ``pdiff_hf.hub`` share: a local Hub server per test module and client processes talking to it.

huggingface_hub and datasets read ``HF_ENDPOINT`` when they are imported, so everything that talks to the server runs
in subprocesses: the test module itself, run as a script with a role (``python test_push.py client WORK``), with
``HF_ENDPOINT`` pointing at the server, ``HF_HUB_DISABLE_XET=1``, a throwaway ``HF_HOME`` and a throwaway
``HF_TOKEN``. Each role records what it saw, step by step, in ``WORK/<role>.json``; the pytest side checks those
records, the server's request log and every byte the server stored.
"""

import contextlib
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
USER = "tester"
SAMPLE = dict(num_models=3, num_inference_steps=5)
TIMEOUT = 420


# ==================================================================================================== pytest side
def free_port() -> int:
    """A port nothing listens on (for connection-refused cases)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(hub_url: str, home: Path, token: str) -> dict:
    """The environment of a client process: this one without any HF settings, pointed at the local server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "DIFFUSERS_"))}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(home),
        HF_TOKEN=token,
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="0",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.contextmanager
def hub_session(work: Path, script: str, roles=("client",)):
    """Start a server, run ``script`` once per role (all at once), yield ``{"token", "server", "logs", "seconds",
    <role>: record}``; fail if a role did not finish. The server stops on exit."""
    import pytest
    from hub_server import HubServer

    token = "hf_" + secrets.token_hex(16)
    server = HubServer({token: USER}).start()
    start = time.time()
    try:
        procs = {}
        for role in roles:
            log = open(work / f"{role}.log", "w")
            cmd = [sys.executable, str(Path(script).resolve()), role, str(work), str(free_port())]
            env = client_env(server.url, work / f"home-{role}", token)
            procs[role] = (subprocess.Popen(cmd, env=env, cwd=str(work), stdout=log, stderr=subprocess.STDOUT), log)
        for role, (proc, log) in procs.items():
            try:
                proc.wait(timeout=max(1, TIMEOUT - (time.time() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        logs = {role: (work / f"{role}.log").read_text() for role in procs}
        records = {}
        for role in procs:
            path = work / f"{role}.json"
            records[role] = json.loads(path.read_text()) if path.exists() else {}
            if not records[role].get("finished"):
                pytest.fail(f"the {role} process did not finish (rc={procs[role][0].returncode}):\n{logs[role][-6000:]}")
        yield {"token": token, "server": server, "logs": logs, "seconds": time.time() - start, **records}
    finally:
        server.stop()


def step(run: dict, role: str, name: str) -> dict:
    """The record of step ``name`` of ``role``; fails with the step's traceback if it raised."""
    record = run[role].get(name)
    assert record is not None, f"{role} did not run step {name}"
    assert "error" not in record, f"{role} step {name} failed:\n{record['error']}"
    return record


def assert_token_never_leaks(run: dict) -> None:
    """The token is in no file the server stored and in no client output."""
    token = run["token"].encode()
    for (repo_type, repo_id), repo in run["server"].state.repos.items():
        for commit in repo.commits.values():
            for path, entry in commit.files.items():
                assert token not in entry.content, f"token found in {repo_type} {repo_id}:{path}"
    for role, log in run["logs"].items():
        assert run["token"] not in log, f"token found in the {role} log"


# ==================================================================================================== client side
class Recorder:
    """``with rec.step(name) as r: r[key] = value``: a failing step records its traceback and the next one runs."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def step(self, name: str):
        recorder = self

        class _Step:
            def __enter__(self):
                self.record = recorder.data.setdefault(name, {})
                self.start = time.time()
                return self.record

            def __exit__(self, exc_type, exc, tb):
                self.record["seconds"] = round(time.time() - self.start, 2)
                if exc is not None:
                    self.record["error"] = "".join(traceback.format_exception(exc_type, exc, tb))
                recorder.save()
                return exc is not None and not isinstance(exc, KeyboardInterrupt)

        return _Step()

    def save(self, **extra) -> None:
        self.data.update(extra)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def error_of(fn) -> dict:
    """What calling ``fn`` raised: ``types`` (the class and its bases, by name) and the ``message`` users see."""
    try:
        fn()
    except Exception as err:
        return {"types": [c.__name__ for c in type(err).__mro__], "message": f"{type(err).__name__}: {err}"}
    return {"types": [], "message": "no error"}


def shared_conftest():
    """``tests/conftest.py`` as a module (its tiny-model builders), for client processes outside pytest."""
    spec = importlib.util.spec_from_file_location("pdiff_tests_conftest", HERE.parent / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_pipeline(seed: int = 0):
    """``(pipe, target network, layout)``: the tiny pipeline of ``tests/conftest.py`` for a BatchNorm MLP."""
    from pdiff_hf import ParamLayout

    shared = shared_conftest()
    net = shared.make_bn_mlp()
    layout = ParamLayout.from_module(net, last_norm_layers=2, include_buffers=True)
    pipe, _ = shared.make_tiny_pipeline(layout, seed=seed)
    return pipe, net, layout


def sample(pipe):
    """``(3, D)`` parameters sampled with a fixed seed: equal for equal pipelines."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    return pipe(**SAMPLE, generator=torch.Generator().manual_seed(0)).params


def block_pdiff_imports() -> list:
    """Make every later ``import pdiff_hf…`` fail (a process without pdiff_hf); returns the list of attempts."""
    blocked = []

    class BlockPdiff:
        def find_spec(self, name, path=None, target=None):
            if name == "pdiff_hf" or name.startswith("pdiff_hf."):
                blocked.append(name)
                raise ImportError(f"pdiff_hf is not available in this process ({name})")
            return None

    sys.meta_path.insert(0, BlockPdiff())
    return blocked


def pdiff_modules() -> list:
    return sorted(m for m in sys.modules if m == "pdiff_hf" or m.startswith("pdiff_hf."))
