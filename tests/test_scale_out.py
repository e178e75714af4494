"""Scale-out: profiles over 2 gloo processes (torchrun), exact merges, content digests.

The two-process runs go through ``python -m torch.distributed.run`` exactly as a
user launches them; the merged profile must be byte-identical (after canonical
serialization, provenance aside) to the one-process run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from treeopt.cli.app import app
from treeopt.errors import TreeoptError
from treeopt.model.digests import file_sha256, files_digest
from treeopt.model.distributed import shard_by_length

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
QUESTIONS = STORIES.parents[1] / "data" / "mt_bench_questions.jsonl"
needs_stories = pytest.mark.skipif(not STORIES.is_dir(),
                                   reason="needs ../shared/models/stories260K")
COMMON = ["--max-new-tokens", "12", "--top-k", "5", "--batch-size", "2", "-q"]


def test_shards_balance_token_counts_deterministically() -> None:
    lengths = [9, 1, 7, 3, 5, 5]
    shards = shard_by_length(lengths, 2)
    assert shards == [[0, 1, 5], [2, 3, 4]]  # 15 and 15 tokens; indices in order
    assert shard_by_length(lengths, 2) == shards
    assert shard_by_length([4], 3) == [[0], [], []]
    assert sorted(i for s in shard_by_length(lengths, 4) for i in s) == list(range(6))
    with pytest.raises(TreeoptError):
        shard_by_length(lengths, 0)


def test_digests_hash_content_and_use_hub_blob_names(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    assert file_sha256(tmp_path / "a.safetensors") == hashlib.sha256(b"weights").hexdigest()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    name = "ab" * 32  # a hub blob is named by its content's SHA-256: not read again
    (blobs / name).write_bytes(b"anything")
    (tmp_path / "b.safetensors").symlink_to(blobs / name)
    assert file_sha256(tmp_path / "b.safetensors") == name
    before = files_digest(tmp_path, ["a.safetensors"])
    (tmp_path / "a.safetensors").write_bytes(b"weightz")
    assert files_digest(tmp_path, ["a.safetensors"]) != before
    assert files_digest(tmp_path, []) is None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random heads for stories260K and 6 MT-Bench prompts of different lengths."""
    import torch

    from medusa_runtime.heads import MedusaConfig, MedusaHeads

    folder = tmp_path_factory.mktemp("scale")
    torch.manual_seed(0)
    heads = MedusaHeads(MedusaConfig(medusa_num_heads=3, medusa_num_layers=1, hidden_size=64,
                                     vocab_size=512, base_model_name_or_path=str(STORIES)))
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    heads.save_pretrained(folder / "heads")
    torch.manual_seed(1)
    for parameter in heads.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    heads.save_pretrained(folder / "other-heads")
    lines = QUESTIONS.read_text().splitlines()
    (folder / "q.jsonl").write_text("\n".join(lines[:6]) + "\n")
    (folder / "qa.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (folder / "qb.jsonl").write_text("\n".join(lines[2:6]) + "\n")
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _profile_args(folder: Path, data: str, output: Path, *extra: str,
                  heads: str = "heads") -> list[str]:
    return ["-m", "treeopt", "profile", "-m", str(STORIES), "--heads", str(folder / heads),
            "-d", str(folder / data), "-o", str(output), *COMMON, *extra]


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", *args], capture_output=True, text=True,
                          env=_env(), timeout=180)


def profile_here(folder: Path, data: str, output: Path, heads: str = "heads",
                 batch_size: int = 2, max_new_tokens: int = 12) -> Path:
    """What `treeopt profile` with COMMON writes, made in this process (no start-up)."""
    from treeopt.model.calibration import encode_prompts, read_prompts
    from treeopt.model.digests import digests_provenance
    from treeopt.model.loading import load_medusa
    from treeopt.model.profiling import ProfileSettings, profile_model

    loaded = load_medusa(str(STORIES), str(folder / heads), quiet=True)
    prompts = encode_prompts(loaded.tokenizer, read_prompts(str(folder / data)),
                             chat_template=True)
    profile_model(loaded.model, loaded.tokenizer, loaded.heads, prompts, output,
                  ProfileSettings(top_k=5, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size),
                  loaded.model_id, str(loaded.heads_id), progress=False,
                  provenance=digests_provenance(loaded.model_id, loaded.heads_id))
    return output


def canonical(path: Path) -> str:
    """The profile JSON without provenance, canonically serialized."""
    data = json.loads(path.read_text())
    data.pop("provenance")
    return json.dumps(data, sort_keys=True)


def assert_same_profile(one: Path, other: Path) -> None:
    assert canonical(one) == canonical(other)
    with np.load(f"{one}.ranks.npz") as a, np.load(f"{other}.ranks.npz") as b:
        assert sorted(a.files) == sorted(b.files) and "probs" in a.files
        for name in a.files:
            assert np.array_equal(a[name], b[name]), name
    targets = [json.loads(Path(f"{p}.targets.json").read_text())["continuations"]
               for p in (one, other)]
    assert targets[0] == targets[1]


@needs_stories
def test_two_ranks_profile_equals_one_process_and_a_failed_rank_resumes(workdir: Path) -> None:
    one, two = workdir / "one" / "p.json", workdir / "two" / "p.json"
    one.parent.mkdir()
    two.parent.mkdir()
    profile_here(workdir, "q.jsonl", one)
    # Rank 1 fails (an unreadable checkpoint of its own): the run fails in one line.
    broken = Path(f"{two}.rank1-of-2.partial.npz")
    broken.write_bytes(b"not a checkpoint")
    failed = _torchrun(*_profile_args(workdir, "q.jsonl", two, "--resume")[1:])
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert failed.returncode != 0 and len(errors) == 1, failed.stderr
    assert "rank 1 of 2 failed" in errors[0] and str(broken) in errors[0]
    assert not two.exists() and Path(f"{two}.rank0-of-2.partial.npz").exists()
    broken.unlink()
    resumed = _torchrun(*_profile_args(workdir, "q.jsonl", two, "--resume")[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_profile(one, two)
    provenance = json.loads(two.read_text())["provenance"]
    assert provenance["world_size"] == 2 and provenance["prompts"] == 6
    assert len(provenance["digests"]["model"]) == 64
    assert not list(two.parent.glob("*.rank?-of-2.*"))  # per-rank files gone once merged


@needs_stories
def test_merge_equals_profiling_the_union_and_refuses_other_heads(workdir: Path) -> None:
    out = workdir / "merge"
    out.mkdir()

    def profile(data: str, name: str, heads: str = "heads") -> Path:
        return profile_here(workdir, data, out / name, heads=heads, batch_size=1)

    # Batches of one: the union run's batches then hold the same prompts as the parts'.
    union = profile("q.jsonl", "union.json")
    a, b = profile("qa.jsonl", "a.json"), profile("qb.jsonl", "b.json")
    merged = out / "ab.json"
    result = CliRunner().invoke(app, ["merge", str(a), str(b), "-o", str(merged)])
    assert result.exit_code == 0, result.output
    assert_same_profile(union, merged)
    provenance = json.loads(merged.read_text())["provenance"]
    assert provenance["prompts"] == 6 and provenance["merged_from"] == [str(a), str(b)]
    other = profile("qb.jsonl", "other.json", heads="other-heads")
    refused = CliRunner().invoke(app, ["merge", str(a), str(other), "-o", str(out / "x.json")])
    assert refused.exit_code == 2 and "heads (content digest)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (out / "x.json").exists()


@needs_stories
def test_data_parallel_training_follows_the_one_process_loss_curve(workdir: Path) -> None:
    from data_parallel_training import train_both

    data = workdir / "train.jsonl"
    data.write_text("\n".join(QUESTIONS.read_text().splitlines()[:10]) + "\n")
    one, two = workdir / "train1", workdir / "train2"
    train_both(data, one)
    script = Path(__file__).with_name("data_parallel_training.py")
    result = _torchrun(str(script), str(data), str(two))
    assert result.returncode == 0, result.stderr
    for kind in ("medusa1", "medusa2"):
        reports = [json.loads((run / kind / "train_report.json").read_text())
                   for run in (one, two)]
        curves = [report["train_loss_per_step"] for report in reports]
        assert len(curves[0]) >= 2 and reports[1]["world_size"] == 2
        np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4)
    # The targets were generated once (in shards) and cached by rank 0, in one file.
    assert [p.name for p in (two / "cache").iterdir()] == \
        [p.name for p in (one / "cache").iterdir()]
    assert (two / "medusa1" / "medusa_lm_head.safetensors").is_file()
    assert (two / "medusa2" / "model.safetensors").is_file()


def test_merge_needs_two_profiles_and_an_output_that_is_not_an_input(tmp_path: Path) -> None:
    lonely = CliRunner().invoke(app, ["merge", "a.json", "-o", str(tmp_path / "m.json")])
    assert lonely.exit_code == 2 and "at least 2 profiles" in lonely.stderr
    (tmp_path / "a.json").write_text("{}")
    clash = CliRunner().invoke(app, ["merge", str(tmp_path / "a.json"), "b.json", "-o",
                                     str(tmp_path / "a.json")])
    assert clash.exit_code == 2 and "is one of the inputs" in clash.stderr


def _rank_one_of(launcher: subprocess.Popen[str]) -> int | None:
    """The pid of the launcher's worker with RANK=1, once it has started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher.pid and b"RANK=1" in environ:
            return int(entry.name)
    return None


@needs_stories
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_rank_fails_the_run_in_one_line_and_resume_finishes_it(workdir: Path) -> None:
    import signal
    import time

    one, two = workdir / "k1" / "p.json", workdir / "k2" / "p.json"
    one.parent.mkdir()
    two.parent.mkdir()
    # Batches of one prompt: a resumed rank re-forms the same batches, so the result
    # is still the one-process profile; 120 new tokens each leave time to kill rank 1
    # after its first prompt.
    extra = ["--batch-size", "1", "--max-new-tokens", "120"]
    args = _profile_args(workdir, "q.jsonl", two, *extra)[1:]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", *args], env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = Path(f"{two}.targets.json.rank1-of-2.json")
    deadline = time.monotonic() + 120
    while not progress.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = _rank_one_of(launcher)
    assert victim is not None, "rank 1 finished or never started"
    os.kill(victim, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    if two.exists():  # rank 1 was done before the kill landed: a machine too busy to test
        pytest.skip("rank 1 finished before it could be killed (a very busy machine)")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert launcher.returncode != 0 and len(errors) == 1, stderr
    assert "--resume" in errors[0] and not two.exists() and progress.exists()
    resumed = _torchrun(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    profile_here(workdir, "q.jsonl", one, batch_size=1, max_new_tokens=120)
    assert_same_profile(one, two)


def test_merge_compares_names_without_digests_and_takes_new_kinds_by_one_function(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from treeopt.core.profile import Profile
    from treeopt.files.profile_file import write_profile
    from treeopt.workflows import merge as merging

    def made(name: str, provenance: dict) -> str:
        ranks = np.array([[0, 1], [1, -1], [0, 0]])
        profile = Profile.from_rank_vectors(ranks, 3, groups=[0, 0, 1], provenance=provenance,
                                            first_decode_index=[0, 0])
        write_profile(tmp_path / name, profile)
        return str(tmp_path / name)

    a = made("a.json", {"model": "m", "heads": "h", "prompts": 2})
    b = made("b.json", {"model": "m", "heads": "h2", "prompts": 2})
    with pytest.raises(TreeoptError, match=r"another heads \('h2' vs 'h'\)"):
        merging.merge_profile_files([a, b], tmp_path / "ab.json")
    seen = []
    monkeypatch.setitem(merging.MERGERS, "expansion",
                        lambda profiles, info: seen.append(len(profiles)) or profiles[0])
    c = made("c.json", {"drafter": "expansion"})
    d = made("d.json", {"drafter": "expansion"})
    merging.merge_profile_files([c, d], tmp_path / "cd.json")
    assert seen == [2] and (tmp_path / "cd.json").is_file()
