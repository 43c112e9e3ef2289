"""Small ONNX graph utilities shared by the precision converters (hand-written: onnx has no
topological sort, and onnx-graphsurgeon, which has one, comes only with the optional TensorRT extra)."""

from __future__ import annotations

import onnx

from liverrt.errors import ExportError


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        for g in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            for n in g.node:
                names.update(n.input)
                names.update(_subgraph_names(n))
    return names


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Order nodes so that each one follows its inputs' producers (the converter appends its Casts)."""
    produced = {o for n in graph.node for o in n.output}
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            needs = set(node.input) | (_subgraph_names(node) & produced)
            if needs <= ready:
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted(set().union(*(set(n.input) for n in rest)) - ready)[:5]
            raise ExportError(f"The converted graph has a cycle or dangling inputs {missing}; expected a DAG.")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
