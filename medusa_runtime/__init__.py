"""medusa_runtime: the tree-attention Medusa runtime that consumes treeopt trees."""
