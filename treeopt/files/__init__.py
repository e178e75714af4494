"""File formats: treeopt's versioned JSON documents and their schemas, atomic writes,
other engines' tree formats, the shipped trees and profiles. Pure: no torch.
"""
