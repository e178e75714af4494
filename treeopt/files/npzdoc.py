"""The ``.npz`` half of the reading layer: every broken archive is one line.

:func:`read_npz` is the one way treeopt opens its ``.npz`` files (profile rank
vectors, profiling checkpoints). It never unpickles (``allow_pickle=False``),
reads every array eagerly (a truncated member fails here, not later in the
middle of a run), and turns each way the file can be broken into one
:class:`TreeoptError` naming it: missing, empty, truncated, not a zip, a plain
``.npy`` array in its place, pickled objects, a member that is not an array,
an array named that the caller requires missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from treeopt.errors import TreeoptError, first_line


def read_npz(path: str | os.PathLike[str], where: str,
             required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arrays of ``.npz`` file ``path`` by name; ``where`` starts every message.

    ``required`` names arrays that must be present.
    """
    import numpy as np

    try:
        with open(path, "rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise TreeoptError(f"{where}: a plain array, not an .npz archive"
                                   + (f" of {', '.join(required)}" if required else ""))
            with loaded as archive:
                arrays = {name: archive[name] for name in archive.files}
    except TreeoptError:
        raise
    except FileNotFoundError:
        raise TreeoptError(f"cannot read {where}: no such file") from None
    except Exception as exc:  # numpy, zipfile and zlib raise a dozen kinds for broken files
        empty = Path(path).is_file() and not Path(path).stat().st_size
        raise TreeoptError(f"cannot read {where}: "
                           f"{'empty file' if empty else first_line(exc)}") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise TreeoptError(f"{where}: missing {', '.join(missing)}")
    return arrays
