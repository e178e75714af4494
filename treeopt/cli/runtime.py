"""``treeopt generate``: decode a prompt with Medusa tree verification (medusa_runtime).

torch, transformers and medusa_runtime are imported inside the verb only.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from treeopt.cli.options import (
    DeviceOption,
    DraftModelOption,
    LoadDtypeOption,
    QuietOption,
    finite_number,
)
from treeopt.errors import TreeoptError

# Draft tokens per step when --draft-model comes without --gamma or --tree: the Medusa
# paper's best setting for Vicuna-7B with Llama-68M (its appendix on speculative decoding).
DEFAULT_GAMMA = 4


class AcceptanceRule(str, Enum):
    greedy = "greedy"
    typical = "typical"


PromptOption = Annotated[str, typer.Option("--prompt", help="Text to continue.")]
BaseModelOption = Annotated[str, typer.Option(
    "--model", "-m", help="Model: registry name (vicuna-7b, zephyr-7b, medusa2-vicuna-7b), "
    "folder or hub id; a Medusa-2 checkpoint brings its own heads.")]
DecodeTreeOption = Annotated[str, typer.Option(
    "--tree", help="Tree JSON file or shipped name (mc_sim_7b_63); 'root' = plain decoding; "
    "dynamic:N = a tree of N tokens chosen every step from the heads' probabilities "
    "(needs --profile); dynamic:S,K,N (--eagle, --draft-model) = the engine-style beam: "
    "S draft passes, top-K, N tokens with the root.")]
EagleOption = Annotated[str | None, typer.Option(
    "--eagle", help="EAGLE drafter folder (EAGLE repo layout or speculators EAGLE-3) for "
    "the model: drafts instead of Medusa heads.")]
CalibrationProfileOption = Annotated[str | None, typer.Option(
    "--profile", "-p", help="With --tree dynamic:N: the measured profile (treeopt profile) "
    "whose head probabilities calibrate the per-step choice.")]
HeadsOption = Annotated[str | None, typer.Option(
    "--heads", help="Medusa heads folder or hub id (default: the model's registered heads).")]
RandomHeadsOption = Annotated[bool, typer.Option(
    "--random-heads",
    help="Untrained random heads (testing only: lossless but accepts almost nothing).")]
MaxNewTokensOption = Annotated[int, typer.Option(
    "--max-new-tokens", min=1, help="New tokens to generate at most (EOS stops sooner).")]
AcceptanceRuleOption = Annotated[AcceptanceRule, typer.Option(
    "--acceptance",
    help="greedy: output equals plain greedy decoding. typical: Medusa's typical "
    "acceptance (accepts more, output may differ).")]
ThresholdOption = Annotated[float, typer.Option(
    callback=lambda value: finite_number(value, "--posterior-threshold", 0.0, 1.0),
    help="typical: epsilon, the probability cap of the threshold (0..1).")]
AlphaOption = Annotated[float, typer.Option(
    callback=lambda value: finite_number(value, "--posterior-alpha", 0.0),
    help="typical: delta, scale of exp(-entropy) in the threshold (>= 0).")]
CompileStepOption = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the verification step first (same text, fewer "
                      "kernels; worth it for long outputs on a GPU).")]
GammaOption = Annotated[int | None, typer.Option(
    "--gamma", min=0,
    help=f"--draft-model: draft a chain of this many tokens a step (default {DEFAULT_GAMMA}); "
         "--tree T drafts the draft's top-k along T instead.")]
ChatTemplateOption = Annotated[bool, typer.Option(
    "--chat-template/--no-chat-template",
    help="Wrap the prompt in the tokenizer's chat template when it has one, as profile and "
         "train-heads do.")]


def decode_tree(tree: str, profile: str | None) -> Any:
    """The tree ``--tree`` names: a file or shipped name, ``root``, or ``dynamic:N`` (a
    per-step policy calibrated on ``--profile``)."""
    from medusa_runtime.beam import BeamTree
    from treeopt.core.tree import Tree
    from treeopt.files.profile_file import load_profile
    from treeopt.files.tree_file import load_tree
    from treeopt.model.dynamic_trees import dynamic_tree
    from treeopt.optimize.evaluation import dynamic_size

    beam = BeamTree.parse(tree)
    if beam is not None:
        if profile is not None:
            raise TreeoptError("--tree dynamic:S,K,N ranks nodes by the drafter's own "
                               "probabilities: drop --profile")
        return beam
    size = dynamic_size(tree)
    if (size is None) != (profile is None):
        raise TreeoptError("--tree dynamic:N and --profile go together")
    if size is not None:
        return dynamic_tree(load_profile(profile), size)
    return Tree.empty() if tree == "root" else load_tree(tree)


def checked_tree(tree: str, profile: str | None, heads: str | None, random_heads: bool,
                 draft_model: str | None, gamma: int | None, eagle: str | None = None) -> Any:
    """The tree to decode with, after the checks of what drafts it (heads, a draft model
    or an EAGLE drafter)."""
    from medusa_runtime.beam import BeamTree
    from treeopt.core.tree import Tree

    if eagle is not None and (draft_model is not None or heads is not None or random_heads):
        raise TreeoptError("--eagle drafts instead of Medusa heads or a draft model: drop "
                           "--heads, --random-heads and --draft-model")
    if gamma is not None and draft_model is None:
        raise TreeoptError("--gamma needs --draft-model")
    if draft_model is not None and (heads is not None or random_heads):
        raise TreeoptError("--draft-model drafts instead of Medusa heads: drop --heads and "
                           "--random-heads")
    if gamma is not None and tree != "root":
        raise TreeoptError("give --gamma (a chain) or --tree, not both")
    chosen = decode_tree(tree, profile)
    if isinstance(chosen, BeamTree) and draft_model is None and eagle is None:
        raise TreeoptError(f"--tree {tree} needs --eagle or --draft-model (Medusa heads use "
                           "dynamic:N with --profile)")
    if draft_model is not None and tree == "root":
        chosen = Tree.chain(DEFAULT_GAMMA if gamma is None else gamma)
    if random_heads and heads is not None:
        raise TreeoptError("give --heads or --random-heads, not both")
    if chosen.depth == 0 and (heads is not None or random_heads):
        raise TreeoptError("--tree root decodes without heads: pass a --tree to use them")
    return chosen


def generate_command(
    prompt: PromptOption,
    model: BaseModelOption,
    tree: DecodeTreeOption = "root",
    heads: HeadsOption = None,
    random_heads: RandomHeadsOption = False,
    max_new_tokens: MaxNewTokensOption = 128,
    acceptance: AcceptanceRuleOption = AcceptanceRule.greedy,
    posterior_threshold: ThresholdOption = 0.09,
    posterior_alpha: AlphaOption = 0.3,
    device: DeviceOption = "auto",
    dtype: LoadDtypeOption = "auto",
    compile_step: CompileStepOption = False,
    profile: CalibrationProfileOption = None,
    chat_template: ChatTemplateOption = True,
    draft_model: DraftModelOption = None,
    gamma: GammaOption = None,
    quiet: QuietOption = False,
    eagle: EagleOption = None,
) -> None:
    """Generate text with Medusa tree decoding; print it and a one-line summary.

    Each step verifies the whole tree (budget = tokens per step, the root
    included) in one forward pass and keeps the longest accepted path. With
    --acceptance greedy the text is exactly what plain greedy decoding writes,
    only faster; the summary shows new tokens, forward passes (steps, prefill
    included), the acceleration rate (tokens per step) and tokens/s.

    \b
    Examples:
      treeopt generate --model vicuna-7b --tree mc_sim_7b_63 --device cuda \\
          --prompt "Hi"
      treeopt generate -m ./llama --heads H --tree dynamic:16 -p prof.json \\
          --prompt "Once"
      treeopt generate -m vicuna-7b --draft-model JackFram/llama-68m --gamma 4 \\
          --prompt "Hi"
      treeopt generate -m ./llama --eagle ./eagle3 --tree dynamic:3,4,8 \\
          --prompt "Once"
    """
    from medusa_runtime.acceptance import TypicalAcceptance
    from medusa_runtime.decode import continuation_text
    from treeopt.model.calibration import encode_prompts
    from treeopt.model.loading import load_medusa, require_heads

    # Cheap checks first: the tree, options and heads before the model loads.
    from treeopt.workflows.devices import device_choice

    chosen = checked_tree(tree, profile, heads, random_heads, draft_model, gamma, eagle)
    eagle_model = _eagle_files(eagle)
    device = device_choice(device)
    need_heads = chosen.depth > 0 and draft_model is None and eagle is None
    if need_heads and not random_heads:
        try:
            require_heads(model, heads)
        except TreeoptError:
            raise TreeoptError(
                f"--tree {tree} needs Medusa heads: pass --heads DIR_OR_HUB_ID "
                "(or --random-heads for a test, or --tree root for plain decoding)"
            ) from None
    loaded = load_medusa(
        model, heads, device=device, dtype=dtype, need_heads=need_heads,
        random_num_heads=max(chosen.num_heads, chosen.depth, 1) if random_heads else None,
        quiet=quiet,
    )
    base, tokenizer = loaded.model, loaded.tokenizer
    medusa = loaded.heads if need_heads else None
    drafter = _drafter(draft_model, eagle_model, base, device, dtype, quiet)
    rule = (TypicalAcceptance(posterior_threshold, posterior_alpha)
            if acceptance is AcceptanceRule.typical else "greedy")
    result = _decode(base, medusa, chosen, tokenizer, prompt, max_new_tokens, rule,
                     compile_step, chat_template, drafter)
    prompt_ids = encode_prompts(tokenizer, [prompt], chat_template=chat_template)[0]
    typer.echo(prompt + continuation_text(tokenizer, prompt_ids, result.tokens))
    typer.echo(
        f"{len(result.tokens)} tokens, {result.steps} steps, acceleration rate "
        f"{result.acceleration_rate:.2f} tokens/step, {result.tokens_per_second:.1f} tokens/s "
        f"({'draft ' * bool(drafter)}tree {chosen.num_tokens} tokens/step, {acceptance.value})",
        err=True,
    )


def _eagle_files(eagle: str | None) -> Any:
    """The EAGLE drafter's weights read and checked (None without --eagle), before the
    target loads."""
    from treeopt.model.loading import read_eagle

    return read_eagle(eagle) if eagle is not None else None


def _drafter(draft_model: str | None, eagle: Any, base: Any, device: str, dtype: str,
             quiet: bool) -> Any:
    """The drafter asked for: a ``DraftModelDrafter`` for the draft model's folder, hub id
    or registry name, an EAGLE drafter for ``base`` from the ``EagleModel`` read, or None."""
    from medusa_runtime.drafter import DraftModelDrafter
    from treeopt.model.loading import load_base_model, load_eagle

    if eagle is not None:
        return load_eagle(eagle, base)
    if draft_model is None:
        return None
    return DraftModelDrafter(load_base_model(draft_model, device=device, dtype=dtype,
                                             quiet=quiet)[0])


def _decode(base: Any, medusa: Any, tree: Any, tokenizer: Any, prompt: str,
            max_new_tokens: int, rule: Any, compile_step: bool, chat_template: bool,
            drafter: Any = None) -> Any:
    """Encode ``prompt`` as profile does (chat template) and decode it; say when compiling."""
    from medusa_runtime.decode import generate
    from treeopt.model.calibration import encode_prompts
    from treeopt.model.progress import working

    input_ids = encode_prompts(tokenizer, [prompt], chat_template=chat_template)[0]
    # Compilation happens once, inside generate, before the first step.
    with working("compiling the verification step, then decoding", enabled=compile_step):
        return generate(base, medusa, tree, input_ids, max_new_tokens, acceptance=rule,
                        eos_token_id=tokenizer.eos_token_id, compile_step=compile_step,
                        drafter=drafter)


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the treeopt app."""
    app.command("generate")(generate_command)
