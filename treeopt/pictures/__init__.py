"""Pictures: trees through graphviz, curves and rooflines through matplotlib."""
