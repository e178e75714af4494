"""``treeopt profile`` and ``treeopt train-heads``: measure or train Medusa heads on a model.

Torch and transformers are imported inside the verbs only (CLI start-up stays fast).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from treeopt.cli.options import (
    DataOption,
    DeviceOption,
    DraftModelOption,
    LoadDtypeOption,
    QuietOption,
    output_file,
    output_folder,
)
from treeopt.errors import TreeoptError
from treeopt.optimize.draft_tune import DEFAULT_DRAFT_DEPTH


def _positive(option: str, value: float) -> float:
    if not value > 0:
        raise TreeoptError(f"{option} must be > 0, not {value}")
    return value


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="Registry name (medusa1-vicuna-7b/13b/33b, medusa2-vicuna-7b/13b/33b, "
        "medusa2-zephyr-7b; vicuna-7b/13b/33b and zephyr-7b still work), local folder, or "
        "Hugging Face hub id; a Medusa-2 checkpoint (model + heads) needs no --heads. Hub ids "
        "load from the normal cache; with HF_HUB_OFFLINE=1 only what is already downloaded.",
    ),
]
DataOpt = DataOption
DeviceOpt = DeviceOption
DtypeOpt = LoadDtypeOption
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(help="'auto': let accelerate shard a model too big for one GPU (ignores "
                 "--device)."),
]
MaxPromptsOpt = Annotated[
    int | None, typer.Option(min=1, help="Use a seeded random subset of this many prompts.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed for --max-prompts and splits.")]
TurnsOpt = Annotated[
    str,
    typer.Option(help="MT-Bench turns: 'first' (later turns refer to an answer the prompt "
                 "lacks) or 'each' (every turn its own prompt)."),
]
ChatOpt = Annotated[
    bool,
    typer.Option("--chat-template/--no-chat-template",
                 help="Wrap each prompt in the tokenizer's chat template, when it has one."),
]
MaxNewOpt = Annotated[
    int, typer.Option(min=1,
                      help="Greedy continuation length per prompt (clipped to the context).")
]
DepthOpt = Annotated[int, typer.Option(
    min=1, help="--draft-model: tree depths recorded per position.")]
ExpandOpt = Annotated[str | None, typer.Option(
    metavar="K_MAX,D_MAX",
    help="--draft-model: also record the drafter's beam expansion (OUTPUT.expansion.npz) "
         "so eval/tune score every dynamic:S,K,N with S <= D_MAX, K <= K_MAX. Costs at "
         "most (D_MAX-1)*K_MAX*(K_MAX+1)/2 extra draft tokens a position.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue the partial results / checkpoint of an interrupted run.")
]
QuietOpt = QuietOption
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Write into a non-empty -o folder that holds no run to --resume "
                        "(earlier heads, other files), replacing files of the same names.")]


def profile(
    model: ModelOpt,
    data: DataOpt,
    output: Annotated[Path, typer.Option("-o", "--output", callback=output_file,
                                         help="Profile JSON to write.")],
    heads: Annotated[
        str | None,
        typer.Option(help="Medusa heads folder or hub id (default: the registry's for --model; "
                     "a Medusa-2 checkpoint carries its own)."),
    ] = None,
    top_k: Annotated[int, typer.Option(
        min=1, help="Ranks recorded per head; beyond is a miss.")] = 20,
    max_new_tokens: MaxNewOpt = 256,
    include_prompt: Annotated[
        bool, typer.Option(help="Also measure positions inside the prompt (decoding never "
                           "visits them).")
    ] = False,
    max_prompts: MaxPromptsOpt = None,
    seed: SeedOpt = 0,
    turns: TurnsOpt = "first",
    chat_template: ChatOpt = True,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    resume: ResumeOpt = False,
    quiet: QuietOpt = False,
    draft_model: DraftModelOption = None,
    depth: DepthOpt = DEFAULT_DRAFT_DEPTH,
    expand: ExpandOpt = None,
) -> None:
    """Measure how well a model's Medusa heads predict its own greedy output.

    For each prompt the model's greedy continuation is generated once (cached in
    OUTPUT.targets.json); then base + heads are teacher-forced over prompt +
    continuation and, at every decoding position, the rank of each true future
    token in each head's top-k is recorded. The profile (marginal + joint) feeds
    `treeopt build`; the ordered rank vectors, kept beside it in OUTPUT.ranks.npz,
    let build and eval score trees by tokens per decoding step (keep the two files
    together). Interrupted? Rerun with --resume (OUTPUT.partial.npz).

    --draft-model D ranks the true tokens in a draft model's top-k instead (draft trees).

    Under torchrun or accelerate launch the ranks share the prompts; rank 0 writes
    the profile one process would (docs/scale-out.md).

    Examples:
      treeopt profile -m vicuna-7b -d q.jsonl --device cuda -o vicuna7b.json
      treeopt profile -m vicuna-7b --draft-model ./llama-68m -d q.jsonl -o d.json
      treeopt profile -m vicuna-7b --draft-model D --expand 4,6 -d q.jsonl -o e
      torchrun --nproc-per-node 8 -m treeopt profile -m vicuna-7b -d q.jsonl \\
          --device cuda -o vicuna7b.json
    """
    from treeopt.files.ranks_file import ranks_path
    from treeopt.model.profiling import ProfileSettings
    from treeopt.workflows.devices import device_choice
    from treeopt.workflows.profiling import ProfileRequest, profile_to_file

    expand_to = _expand_setting(expand, draft_model, depth)
    result = profile_to_file(ProfileRequest(
        model=model, data=data, output=output, heads=heads,
        settings=ProfileSettings(top_k=top_k, max_new_tokens=max_new_tokens,
                                 include_prompt=include_prompt, batch_size=batch_size),
        max_prompts=max_prompts, seed=seed, turns=turns, chat_template=chat_template,
        device=device_choice(device), dtype=dtype, device_map=device_map, resume=resume,
        quiet=quiet, draft_model=draft_model, depth=depth, expand=expand_to))
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    info = result.provenance
    what = (f"draft depth {result.num_heads}" if draft_model is not None
            else f"{result.num_heads} heads")
    skipped = info.get("skipped_prompts")
    typer.echo(
        f"wrote {output}: {result.num_positions} positions from {info['prompts']} prompts, "
        f"{what}, top-{result.top_k}"
        + (f" (skipped {skipped} that fill the context)" if skipped else "")
        + f"; rank vectors in {ranks_path(output)}",
        err=True,
    )


def _expand_setting(expand: str | None, draft_model: str | None, depth: int
                    ) -> tuple[int, int] | None:
    """``--expand K_MAX,D_MAX`` checked against the other options (before loading)."""
    from treeopt.core.expansion import parse_expand

    if expand is not None and draft_model is None:
        raise TreeoptError("--expand records a drafter's beam: it needs --draft-model")
    return None if expand is None else parse_expand(expand, depth)


class BackboneLoss(str, Enum):
    ce = "ce"
    distill = "distill"


EpochsOpt = Annotated[int | None, typer.Option(
    min=1, help="Passes over the training prompts (default: 3, more on a small run so it "
                "makes at least 300 optimizer steps, at most 50).")]
LrOpt = Annotated[float | None, typer.Option(
    "--lr", callback=lambda value: value if value is None else _positive("--lr", value),
    help="Heads' peak AdamW learning rate (Medusa-1; default 1e-2). With --joint the heads "
         "learn 4x --backbone-lr.")]
JointOpt = Annotated[bool, typer.Option(
    "--joint", help="Medusa-2: train LoRA adapters on the whole model (every linear layer, "
                    "LM head included) together with the heads; writes a merged "
                    "checkpoint (fine-tuned model + heads).")]
BackboneLossOpt = Annotated[BackboneLoss, typer.Option(
    help="--joint: 'ce' next-token cross-entropy (lambda_0 0.2; two-stage with "
         "--init-heads) or 'distill' KL to the original model (lambda_0 rising to 0.01).")]
BackboneLrOpt = Annotated[float, typer.Option(
    callback=lambda value: _positive("--backbone-lr", value),
    help="--joint: the LoRA adapters' peak learning rate.")]
WarmupOpt = Annotated[int, typer.Option(
    min=0, help="--joint: linear warm-up steps before the cosine decay.")]
InitHeadsOpt = Annotated[str | None, typer.Option(
    help="--joint: start from these Medusa-1 heads (folder or hub id; two-stage).")]
QloraOpt = Annotated[bool, typer.Option(
    "--qlora", help="--joint: load the base in 4 bits (needs CUDA and bitsandbytes).")]
TargetsCacheOpt = Annotated[Path | None, typer.Option(
    help="Folder caching the model's greedy continuations, shared by runs (default: "
         "$TREEOPT_CACHE_DIR or ~/.cache/treeopt): the same model, prompts and "
         "--max-new-tokens never generate twice.")]


EagleVersionOpt = Annotated[int | None, typer.Option(
    "--eagle-version", min=1, max=3,
    help="Train an EAGLE drafter instead of Medusa heads: 1 (EAGLE-1/2) or 3 (EAGLE-3); "
         "written in the EAGLE repo layout that generate --eagle loads.")]
TttStepsOpt = Annotated[int, typer.Option(
    min=1, help="--eagle-version 3: training-time-test steps (the drafter reads its own "
                "outputs; EAGLE's repo uses 7).")]
DraftVocabOpt = Annotated[int | None, typer.Option(
    min=2, help="--eagle-version 3: draft vocabulary size, the most frequent tokens of the "
                "continuations (default: half the target's, at most 32000).")]


def train_heads(
    model: ModelOpt,
    data: DataOpt,
    output: Annotated[
        Path, typer.Option("-o", "--output", callback=output_folder,
            help="Folder for the heads (config.json + medusa_lm_head.safetensors; with "
                 "--joint a whole Medusa-2 checkpoint) and train_report.json.")
    ],
    num_heads: Annotated[int, typer.Option(
        min=1, help="Medusa heads K (head k predicts k+1 ahead).")]
    = 5,
    num_layers: Annotated[int, typer.Option(min=0, help="ResBlocks per head.")] = 1,
    epochs: EpochsOpt = None,
    learning_rate: LrOpt = None,
    joint: JointOpt = False,
    backbone_loss: BackboneLossOpt = BackboneLoss.ce,
    backbone_lr: BackboneLrOpt = 1e-4,
    warmup_steps: WarmupOpt = 20,
    init_heads: InitHeadsOpt = None,
    qlora: QloraOpt = False,
    targets_cache: TargetsCacheOpt = None,
    eagle_version: EagleVersionOpt = None,
    ttt_steps: TttStepsOpt = 3,
    draft_vocab: DraftVocabOpt = None,
    held_out: Annotated[
        float, typer.Option(help="Fraction of prompts held out for the accuracy report.")
    ] = 0.1,
    max_new_tokens: MaxNewOpt = 256,
    max_prompts: MaxPromptsOpt = None,
    seed: SeedOpt = 0,
    turns: TurnsOpt = "first",
    chat_template: ChatOpt = True,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train Medusa heads by self-distillation: Medusa-1 (heads only) or Medusa-2 (--joint).

    Targets are the model's own greedy continuations of the prompts (cached and
    reused across runs); head k's loss is weighted 0.8^k (Medusa paper). Medusa-1
    keeps the base frozen and saves the heads after every epoch in the layout
    `treeopt profile --heads` and the runtime load. Medusa-2 (--joint) fine-tunes
    the model through LoRA together with the heads and writes a merged checkpoint
    that profile, generate, overhead and study load with no --heads. The
    run reports per-head top-1/top-5 on held-out prompts and warns when they stay
    near chance. Interrupted? Rerun with --resume. A non-empty -o folder that is
    not this run's own is refused (--overwrite replaces its files).

    --eagle-version 1|3 trains an EAGLE drafter instead (docs/eagle.md).

    \b
    Examples:
      treeopt train-heads -m ./my-model -d prompts.txt -o heads/
      treeopt train-heads -m ./my-model -d prompts.txt --joint \\
          --backbone-loss distill -o m2/
      treeopt train-heads -m ./my-model -d prompts.txt --joint \\
          --init-heads heads/ -o m2/
      treeopt train-heads -m ./my-model -d prompts.txt --eagle-version 3 -o e3/
    """
    from treeopt.model.train_heads import train_heads_from
    from treeopt.workflows.devices import device_choice
    run = dict(max_prompts=max_prompts, turns=turns, chat_template=chat_template,
               device=device_choice(device), dtype=dtype, resume=resume,
               progress=not quiet, targets_cache=targets_cache, overwrite=overwrite)
    if eagle_version is not None:
        return _train_eagle(model, data, output, eagle_version, joint, num_heads, num_layers,
                            dict(epochs=epochs, learning_rate=learning_rate, ttt_steps=ttt_steps,
                                 draft_vocab_size=draft_vocab, held_out_fraction=held_out,
                                 max_new_tokens=max_new_tokens, seed=seed,
                                 batch_size=batch_size), run)
    settings = _medusa_settings(joint, learning_rate, init_heads, qlora, dict(
        num_heads=num_heads, num_layers=num_layers, epochs=epochs, batch_size=batch_size,
        held_out_fraction=held_out, max_new_tokens=max_new_tokens, seed=seed),
        (backbone_loss.value, backbone_lr, warmup_steps))
    report = train_heads_from(model, data, output, settings, device_map=device_map, **run)
    _print_report(output, report, joint, num_heads)


def _medusa_settings(joint: bool, learning_rate: float | None, init_heads: str | None,
                     qlora: bool, fields: dict[str, Any], backbone: tuple) -> Any:
    """The Medusa-1/2 ``TrainSettings`` after the checks of options that do not mix."""
    from treeopt.model.train_heads import TrainSettings

    if joint and learning_rate is not None:
        raise TreeoptError("--joint sets the heads' learning rate to 4x --backbone-lr: "
                           "drop --lr")
    if not joint and (init_heads is not None or qlora):
        raise TreeoptError("--init-heads and --qlora are for --joint (Medusa-2)")
    optional = {} if learning_rate is None else {"learning_rate": learning_rate}
    return TrainSettings(**fields, **optional,
                         joint=_joint_settings(joint, *backbone, init_heads, qlora))


def _train_eagle(model: str, data: str, output: Path, version: int, joint: bool,
                 num_heads: int, num_layers: int, settings: dict[str, Any],
                 run: dict[str, Any]) -> None:
    """``train-heads --eagle-version``: refuse Medusa-only options, train, print."""
    from treeopt.model.train_eagle import EagleSettings, train_eagle_from

    if version not in (1, 3):
        raise TreeoptError(f"--eagle-version must be 1 or 3, not {version}")
    if joint or num_heads != 5 or num_layers != 1:
        raise TreeoptError("--joint, --num-heads and --num-layers are for Medusa heads, "
                           "not --eagle-version")
    if settings["learning_rate"] is None:
        del settings["learning_rate"]
    report = train_eagle_from(model, data, output, EagleSettings(eagle_version=version,
                                                                 **settings), **run)
    accuracy = report["held_out_accuracy"]
    steps = " ".join(f"{x:.3f}" for x in accuracy["top1"])
    typer.echo(f"wrote {output}: an EAGLE-{version} drafter after {report['epochs']} epochs; "
               f"held-out top-1 per drafting step: {steps}", err=True)
    if report["warning"]:
        typer.echo(f"warning: {report['warning']}", err=True)


def _print_report(output: Path, report: dict[str, Any] | None, joint: bool,
                  num_heads: int) -> None:
    if report is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    accuracy = report["held_out_accuracy"]
    what = "a Medusa-2 checkpoint" if joint else f"{num_heads} heads"
    typer.echo(f"wrote {output}: {what} after {report['epochs']} epochs; held-out accuracy "
               "per head:", err=True)
    for k in range(num_heads):
        typer.echo(
            f"  head {k + 1}: top-1 {accuracy['top1'][k]:.3f}  top-5 {accuracy['top5'][k]:.3f}",
            err=True,
        )
    if report["warning"]:
        typer.echo(f"warning: {report['warning']}", err=True)


def _joint_settings(joint: bool, backbone_loss: str, backbone_lr: float, warmup_steps: int,
                    init_heads: str | None, qlora: bool) -> Any:
    if not joint:
        return None
    from treeopt.model.train_heads import JointSettings

    return JointSettings(backbone_loss=backbone_loss, backbone_lr=backbone_lr,
                         warmup_steps=warmup_steps, init_heads=init_heads, qlora=qlora)


def register(app: typer.Typer) -> None:
    """Add ``profile`` and ``train-heads`` to the treeopt CLI."""
    app.command("profile")(profile)
    app.command("train-heads")(train_heads)

