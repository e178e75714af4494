"""``python -m treeopt``: the same CLI as the ``treeopt`` command."""

from treeopt.cli import main

if __name__ == "__main__":
    main()
