"""A tour of gpubackprop's computational graphs, following the seed notes (lecture 4).

1. f = (x + y) z: the add gate distributes, the mul gate switches.
2. The same sigmoid neuron at two granularities: five primitive gates, or one
   fused sigmoid gate; the gradients are the same.
3. The max gate routes the gradient to the larger input.
4. The 2-layer network f = W2 max(0, W1 x) with a squared loss, drawn as a picture.
5. Layers are coarse gates: a Dense layer, primitive gates and the fused
   softmax cross-entropy in one graph, trained for a few steps.
6. The Jacobian of a vector function, one backward pass per row.
7. Indexing, max, log_softmax, stack: the cross-entropy rebuilt from primitives equals
   the fused loss; a row picked three times gets three gradients; tied maxima share.

Run: python examples/graph_tour.py [--device cpu] [--render docs/graph_example.png]
"""

from __future__ import annotations

import argparse

import numpy as np

import gpubackprop as gb


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--render", metavar="PATH", help="draw the 2-layer graph (.png/.svg)")
    args = parser.parse_args(argv)
    backend = gb.get_backend(args.device)

    def tensor(values: object, name: str, requires_grad: bool = True) -> gb.Tensor:
        return gb.Tensor(backend.asarray(np.asarray(values, dtype=np.float64)),
                         requires_grad=requires_grad, name=name)

    # 1. add distributes, mul switches: f = (x + y) z at x = -2, y = 5, z = -4
    x, y, z = tensor(-2.0, "x"), tensor(5.0, "y"), tensor(-4.0, "z")
    q = x + y
    f = q * z
    f.backward()
    dx, dy, dz = (float(t.grad) for t in (x, y, z))
    print(f"1. f = (x + y) z = {f.item():g}:  df/dx = {dx:g}, df/dy = {dy:g} "
          f"(add: both get df/dq = z), df/dz = {dz:g} (mul: the other input, q = {q.item():g})")

    # 2. granularity: σ(w0 x0 + w1 x1 + w2) from primitives, then fused
    results = {}
    for fused in (False, True):
        w = tensor([2.0, -3.0, -3.0], "w")
        xs = tensor([-1.0, -2.0, 1.0], "x", requires_grad=False)
        s = (w * xs).sum()
        out = s.sigmoid() if fused else 1 / (1 + (-s).exp())
        out.backward()
        nodes = len(gb.topological_order(out))
        results[fused] = backend.to_numpy(w.grad)
        kind = "one sigmoid gate " if fused else "primitive gates  "
        print(f"2. {kind}: {nodes:2d} nodes, f = {out.item():.4f}, "
              f"df/dw = {np.round(results[fused], 4)}")
    print(f"   same gradients: {np.allclose(results[False], results[True], rtol=1e-12)}")

    # 3. max routes: the gradient goes to the larger input only
    a, b = tensor([1.0, 4.0], "a"), tensor([3.0, 2.0], "b")
    gb.maximum(a, b).sum().backward()
    print(f"3. max([1, 4], [3, 2]): d/da = {backend.to_numpy(a.grad)}, "
          f"d/db = {backend.to_numpy(b.grad)}")

    # 4. the 2-layer network of the notes, f = W2 max(0, W1 x), loss Σ (f − t)²
    rng = np.random.default_rng(0)
    x4 = tensor(rng.standard_normal(3).round(2), "x", requires_grad=False)
    w1 = tensor(rng.standard_normal((2, 3)).round(2), "W1")
    w2 = tensor(rng.standard_normal((1, 2)).round(2), "W2")
    target = tensor([1.0], "t", requires_grad=False)
    h = gb.maximum(w1 @ x4, 0.0)
    h.name = "h"
    loss4 = ((w2 @ h - target) ** 2).sum()
    loss4.name = "loss"
    loss4.backward()
    dot = gb.to_dot(loss4)
    print(f"4. 2-layer net: loss = {loss4.item():.4f}, dL/dW1 shape {w1.grad.shape} "
          f"(= W1's), DOT text of {dot.count('->')} edges")
    if args.render:
        print(f"   picture: {gb.render(loss4, args.render)}")

    # 5. layers are coarse gates: Dense -> relu gate -> matmul gate -> fused loss
    data = rng.standard_normal((32, 4))
    labels = backend.asarray((data[:, 0] + data[:, 1] > 0).astype(np.int64))
    xb = backend.asarray(data)
    layer = gb.Dense(4, 8).build(device=args.device, dtype="float64", seed=0)
    head = gb.Tensor(backend.asarray(rng.standard_normal((2, 8)) * 0.3), requires_grad=True)
    params = [*layer.parameter_tensors().values(), head]
    losses = []
    for _ in range(30):
        gb.zero_grad(*params)
        loss5 = gb.softmax_cross_entropy(layer(xb).relu() @ head.T, labels)
        loss5.backward()
        for p in params:  # plain SGD on the graph's gradients
            p.data -= 0.5 * p.grad
        losses.append(loss5.item())
    print(f"5. Dense gate + primitive gates + fused loss, 30 SGD steps: "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    # 6. the Jacobian of y = tanh(W x), one backward per output row
    w6 = backend.asarray(rng.standard_normal((2, 3)))
    jac = backend.to_numpy(gb.jacobian(lambda t: (w6 @ t).tanh(), backend.asarray(np.ones(3))))
    print(f"6. Jacobian of tanh(W x) at x = 1, shape {jac.shape}:\n{np.round(jac, 4)}")

    # 7. new gates: L = −mean_b log softmax(z_b)[y_b] by indexing, vs the fused loss
    z = tensor(rng.standard_normal((4, 3)).round(2), "z")
    y7 = [2, 0, 1, 1]
    primitive = -z.log_softmax()[[0, 1, 2, 3], y7].mean()  # row b, column y_b
    fused = gb.softmax_cross_entropy(z, backend.asarray(np.array(y7)))
    print(f"7. cross-entropy from log_softmax + indexing {primitive.item():.6f}, "
          f"fused {fused.item():.6f}")
    table = tensor(np.zeros((3, 2)), "table")
    gb.concatenate([table[[0, 2, 0]], gb.stack([table[0]])]).sum().backward()
    print(f"   concatenate(table[[0, 2, 0]], stack([table[0]])): d/dtable rows = "
          f"{backend.to_numpy(table.grad)[:, 0]} (row 0 picked three times)")
    ties = tensor([1.0, 3.0, 3.0], "v")
    ties.max().backward()
    print(f"   max([1, 3, 3]): the tied maxima share, d/dv = {backend.to_numpy(ties.grad)}")
    try:
        np.exp(ties)
    except gb.NumpyOnTensorError as exc:
        print(f"   np.exp(v) raises {type(exc).__name__}: {exc}")
    return {"first_loss": losses[0], "last_loss": losses[-1],
            "indexed_xent": primitive.item(), "fused_xent": fused.item()}


if __name__ == "__main__":
    main()
