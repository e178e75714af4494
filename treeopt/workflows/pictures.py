"""``treeopt render`` as one call: a tree, two trees compared, or a build/tune curve as a picture.

Loads the trees (and the profile that colours them), builds the DOT source
(:mod:`treeopt.pictures.render`) or the curve figure (:mod:`treeopt.pictures.plots`)
and writes it. Without graphviz's ``dot`` the DOT text is written instead and
the outcome says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from treeopt.errors import ParameterError, TreeoptError
from treeopt.pictures.render import DEFAULT_MAX_NODES

if TYPE_CHECKING:
    from treeopt.core.profile import Profile
    from treeopt.core.tree import Path as RankPath
    from treeopt.core.tree import Tree
    from treeopt.pictures.render import DotPicture

DEFAULT_SUFFIX = ".svg"  # scales without blurring and GitHub shows it inline
MAX_TITLE_FACTS = 4  # provenance entries in a curve plot's title before it overflows
DEFAULT_ACCEPTANCE_MODEL = "independent"  # what build, tune and evaluate default to


@dataclass(frozen=True)
class RenderSettings:
    """What to draw: ``tree`` (with ``compare``: both), or ``curve`` alone; where to write it.

    ``profile`` colours the nodes by acceptance probability under ``acceptance_model``.
    ``output`` None: :func:`default_output`.
    """

    tree: str | None = None
    profile: str | None = None
    output: Path | None = None
    max_nodes: int = DEFAULT_MAX_NODES
    acceptance_model: str = DEFAULT_ACCEPTANCE_MODEL
    compare: str | None = None
    curve: Path | None = None


@dataclass(frozen=True)
class PictureOutcome:
    """What was written: ``written`` is ``requested``, or its ``.dot`` twin when ``fell_back``
    (no graphviz ``dot``); ``hidden_note`` says which nodes were folded, if any."""

    written: Path
    requested: Path
    fell_back: bool = False
    hidden_note: str | None = None


def _stem(name_or_path: str) -> str:
    """A file-name stem for a tree argument: a shipped name or a file's stem."""
    return Path(name_or_path).stem


def default_output(tree: str | None, compare: str | None, curve: Path | None) -> Path:
    """Where a picture goes when no output is given: TREE.svg, TREE_vs_OTHER.svg or CURVE.svg."""
    if curve is not None:
        return Path(curve.stem + DEFAULT_SUFFIX)
    assert tree is not None
    if compare is not None:
        return Path(f"{_stem(tree)}_vs_{_stem(compare)}{DEFAULT_SUFFIX}")
    return Path(_stem(tree) + DEFAULT_SUFFIX)


def acceptance_probabilities(
    profile: Profile, paths: Sequence[RankPath], acceptance_model: str
) -> Mapping[RankPath, float]:
    """P(path accepted) per path under the profile, as the builder values nodes."""
    from treeopt.core.tree import Tree
    from treeopt.optimize.acceptance_models import node_values

    return node_values(Tree.from_paths(paths), profile, acceptance_model)


def expected_accept_length(tree: Tree, profile: Profile, acceptance_model: str) -> float:
    """The tree's expected accept length under the profile (tokens/step, root included)."""
    from treeopt.optimize.acceptance_models import expected_accept_length as score

    return score(tree, profile, acceptance_model=acceptance_model)


def build_score(tree: Tree, profile: Profile, acceptance_model: str) -> tuple[float, str]:
    """The figure ``treeopt build`` reports for ``tree`` on ``profile``, and its name.

    Build's default: with the profile's rank vectors, tokens per decoding step replayed
    over the calibration text (weighting by steps); without, the expected accept length
    under ``acceptance_model`` (weighting by positions).
    """
    if getattr(profile, "sequences", None) is not None:
        from treeopt.optimize.replay import tokens_per_step

        return tokens_per_step(tree, profile), "tokens/step replayed"
    return expected_accept_length(tree, profile, acceptance_model), "expected accept length"


def _tree_title(name: str, tree: Tree, accept: float | None, source: str,
                what: str = "expected accept length") -> str:
    title = f"{name}: {len(tree)} nodes, {tree.num_tokens} tokens/step, depth {tree.depth}"
    if accept is not None:
        title += f", {what} {accept:.3f} ({source})"
    return title


def curve_title(name: str, provenance: Mapping[str, object]) -> str:
    """A plot title: the curve's name and its scalar provenance (profile, GPU, ...)."""
    facts = [
        f"{key}={value}" for key, value in provenance.items()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool)
    ][:MAX_TITLE_FACTS]
    return f"{name} ({', '.join(facts)})" if facts else name


def render_picture(settings: RenderSettings) -> PictureOutcome:
    """Draw what ``settings`` asks for and write it; bad input fails before any work."""
    if settings.curve is not None:
        if settings.tree is not None or settings.compare is not None \
                or settings.profile is not None:
            raise TreeoptError("--curve draws a curve file alone: drop TREE, --compare, --profile")
        return render_curve(settings.curve, settings.output
                            or default_output(None, None, settings.curve))
    if settings.tree is None:
        raise TreeoptError("nothing to draw: give a TREE (file or shipped name) or --curve FILE")
    from treeopt.pictures import render as pictures

    target = settings.output or default_output(settings.tree, settings.compare, None)
    pictures.output_format(target)  # refuse a bad extension before any work
    picture = tree_picture(settings)
    outcome = pictures.render_dot(picture.source, target)
    return PictureOutcome(outcome.written, target, outcome.fell_back,
                          picture.hidden_note() or None)


def tree_picture(settings: RenderSettings) -> DotPicture:
    """The DOT picture of ``settings.tree`` (and ``settings.compare``), titled and coloured."""
    from treeopt.files.tree_file import load_tree_document
    from treeopt.pictures import render as pictures

    assert settings.tree is not None
    tree, compare, model = settings.tree, settings.compare, settings.acceptance_model
    first = load_tree_document(tree)
    profile = None
    if settings.profile is not None:
        from treeopt.files.profile_file import load_profile

        profile = load_profile(settings.profile)
    if profile is None and model != DEFAULT_ACCEPTANCE_MODEL:
        raise ParameterError("acceptance_model", f"{model} needs --profile: it colours nodes "
                             "by a profile")
    if compare is None:
        probabilities, accept, source = None, first.expected_accept_length, "from the tree file"
        what = "expected accept length"
        if profile is not None:
            probabilities = acceptance_probabilities(profile, first.tree.paths, model)
            accept, what = build_score(first.tree, profile, model)
            source = f"{settings.profile}, {model}, as build scores it"
        title = _tree_title(_stem(tree), first.tree, accept, source, what)
        return pictures.tree_to_dot(first.tree, probabilities, title, settings.max_nodes)
    second = load_tree_document(compare)
    names = (_stem(tree), _stem(compare))
    title = f"{names[0]} ({len(first.tree)} nodes) vs {names[1]} ({len(second.tree)} nodes)"
    probabilities = None
    if profile is not None:
        union = sorted(set(first.tree.paths) | set(second.tree.paths))
        probabilities = acceptance_probabilities(profile, union, model)
        (one, what), (other, _) = (build_score(t.tree, profile, model) for t in (first, second))
        title += f"; {what} {one:.3f} vs {other:.3f} ({settings.profile}, {model})"
    return pictures.comparison_to_dot(first.tree, second.tree, names, probabilities, title,
                                      settings.max_nodes)


def render_curve(curve: Path, target: Path) -> PictureOutcome:
    """Plot a ``treeopt.curve/1`` file (from build/tune ``--curve``) as a figure."""
    from treeopt.files.curve_file import read_curve
    from treeopt.pictures.plots import plot_curve

    loaded = read_curve(curve)
    written = plot_curve(loaded.rows, target, title=curve_title(curve.stem, loaded.provenance))
    return PictureOutcome(Path(written), target)
