"""Hub ids load from the Hugging Face cache offline (``HF_HUB_OFFLINE=1``), no network.

The cache is laid out as huggingface_hub lays it out (content-addressed blobs, a
snapshot of symlinks, ``refs/main``), filled with stories260K and random heads,
and ``treeopt generate`` is run on the hub ids in a fresh process (the hub reads
its cache location at import). Greedy Medusa decoding is lossless, so the text
must equal plain decoding of the local folder.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medusa_runtime.heads import MedusaConfig, MedusaHeads

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models/stories260K")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PROMPT = "Once upon a time"


def cache_repo(cache: Path, repo_id: str, folder: Path) -> None:
    """Put every file of ``folder`` into ``cache`` as the snapshot ``COMMIT`` of ``repo_id``."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for source in sorted(folder.iterdir()):
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)


def treeopt_generate(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "treeopt", "generate", "--prompt", PROMPT,
         "--max-new-tokens", "16", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("hub")
    cache_repo(cache, "tiny-org/stories260K", STORIES)
    torch.manual_seed(0)
    heads_folder = tmp_path_factory.mktemp("heads")
    MedusaHeads(MedusaConfig(4, 1, hidden_size=64, vocab_size=512)).save_pretrained(heads_folder)
    cache_repo(cache, "tiny-org/medusa-stories260K", heads_folder)
    return cache


def test_hub_ids_load_from_the_offline_cache(hub_cache: Path) -> None:
    plain = treeopt_generate(hub_cache, "--model", str(STORIES), "--tree", "root")
    assert plain.returncode == 0, plain.stderr
    medusa = treeopt_generate(hub_cache, "--model", "tiny-org/stories260K",
                              "--heads", "tiny-org/medusa-stories260K", "--tree", "mc_sim_7b_63")
    assert medusa.returncode == 0, medusa.stderr
    assert medusa.stdout == plain.stdout
    assert medusa.stdout.startswith(PROMPT) and len(medusa.stdout) > len(PROMPT) + 10


def test_uncached_hub_id_offline_is_one_line_error(hub_cache: Path) -> None:
    result = treeopt_generate(hub_cache, "--model", "tiny-org/stories260K",
                              "--heads", "tiny-org/not-downloaded", "--tree", "mc_sim_7b_63")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tiny-org/not-downloaded" in errors[0], result.stderr
