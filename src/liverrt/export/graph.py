"""ONNX graph edits shared by the precision converters, on onnx-graphsurgeon (NVIDIA's; topological
sort, cleanup and the producer/consumer links come from it). What it lacks is written here, and says so."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import onnx
import onnx_graphsurgeon as gs


@contextmanager
def edit_graph(model: onnx.ModelProto) -> Iterator[gs.Graph]:
    """``model``'s graph as an onnx-graphsurgeon Graph, written back into ``model`` when the block ends.

    On the way back the graph is cleaned up (nodes and initializers nothing reads any more go; graph inputs
    and outputs stay) and value_info keeps only the tensors still there. Only ``model.graph`` is replaced,
    so the model's metadata_props, opset imports and IR version stay as they were; an exception inside the
    block leaves ``model`` untouched. Nodes and initializers taken from ``model.graph`` before the block
    are stale after it: look them up again.
    """
    graph = gs.import_onnx(model)
    yield graph
    graph.cleanup()
    edited = gs.export_onnx(graph).graph
    _keep_annotations(model.graph, edited)
    model.graph.CopyFrom(edited)


def _keep_annotations(old: onnx.GraphProto, new: onnx.GraphProto) -> None:
    """Copy the metadata_props of the graph, its nodes and its tensors (by name) from ``old`` to ``new``.

    Hand-written: onnx-graphsurgeon 0.6 does not carry them (the torch exporter's provenance of each node).
    """
    nodes = {n.name: n.metadata_props for n in old.node if n.name}
    values = {v.name: v.metadata_props for v in (*old.input, *old.output, *old.value_info)}
    pairs = [(new, old.metadata_props), *((n, nodes.get(n.name, ())) for n in new.node),
             *((v, values.get(v.name, ())) for v in (*new.input, *new.output, *new.value_info))]
    for proto, props in pairs:
        del proto.metadata_props[:]
        proto.metadata_props.extend(props)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that writes ``tensor``; None for graph inputs and initializers."""
    return tensor.inputs[0] if tensor.inputs else None


def reroute(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every node that reads ``old`` read ``new`` (hand-written: onnx-graphsurgeon has no such call)."""
    for node in list(old.outputs):
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new
