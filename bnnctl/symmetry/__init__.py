"""Weight-space symmetries of stacked MLPs: canonical forms and weight matching.

Every hidden-unit permutation of an MLP gives the same function; for positively
homogeneous activations (relu, leaky relu) so does every positive rescaling of a unit
(incoming weights and bias ×λ, outgoing weights ×1/λ), and for odd ones (tanh) every
sign flip. The symmetries are *data*: :meth:`ArchSpec.unit_groups` says which
``(tensor, axis)`` pairs a hidden layer's units index, and everything here applies
permutations, scalings and signs generically from that, to ``M`` models at once held
as one model-major ``[M, P]`` float64 tensor (Laurent et al., ICLR 2024; Ainsworth et
al., Git Re-Basin, ICLR 2023).

The same code canonicalises CNNs (:class:`bnnctl.arch.ConvSpec`): a conv channel is a
unit whose slices are whole kernels (masses sum their spatial elements), a Linear after
a flatten is seen as ``[out, C, H·W]``, and a grouped conv's units come in ``blocks``:
each layer is sorted within its blocks, then whole blocks are ordered by their sorted
keys (:func:`.sorting.block_sort_order`), carrying what the blocks feed. Dead-unit
folding (step 0) is MLP-only.

Canonical form, in this order:

0. **dead units** (with scale): a unit whose incoming or outgoing weights are all zero
   has no minimum-L2 point (the mass falls without bound along its orbit); it is put at
   the orbit's limit, with the function unchanged: no outgoing weights, its incoming
   weights and bias are zeroed; no incoming weights (a constant output ``act(b)``),
   ``act(b)·w_out`` is folded into the next layer's bias and it is zeroed (with dropout
   only when ``act(b) = 0``; otherwise it is scaled to ``|b| = 1``). See
   :func:`.scaling.dead_units_`; the canonicalize report counts them.
1. **scale** (``l2``): the unique minimum-L2-mass point of the scaling orbit. With
   log-scales ``s`` per hidden unit (0 for inputs and outputs) a weight ``W[j, i]``
   becomes ``W[j, i]·exp(s_row[j] − s_col[i])``, so the mass
   ``Σ_W Σ_ji W[j,i]²·exp(2 s_row[j] − 2 s_col[i])`` is a sum of exponentials of linear
   functions of ``s``: convex, strictly so when every unit has non-zero incoming and
   outgoing weights. Its gradient is ``∂/∂s_j = 2 (in_j − out_j)`` (incoming minus
   outgoing weight mass of unit ``j``), so the minimum is where every unit balances.
   Units of one layer do not interact, so one layer is solved exactly in closed form
   (``exp(4 s_j) = OUT_j / IN_j``) with the others fixed, and layers are swept
   (block Gauss–Seidel) until no log-scale moves by more than ``tol``. Biases are
   rescaled with their unit but not counted in the mass (as in the paper).
   ``unitnorm`` instead scales each unit's incoming weight vector to norm 1, layer by
   layer from the input.
2. **sign** (tanh): flip each unit so that ``Σ_i W[j, i] + b_j > 0``, layer by layer.
3. **perm**: sort each hidden layer's units by a key, descending, layer by layer from
   the input, carrying each permutation into the next layer's inputs; the output layer
   is never permuted. Keys are compared after rounding to ``KEY_QUANTUM`` of the
   layer's largest |key| (so exact structural ties fall to the tie-breaks: the bias,
   then the outgoing weights, lexicographically; weights into a hidden layer, not yet
   sorted, are compared as sorted values).
   ``pc`` (default): each unit's incoming weight vector projected on the layer's
   leading principal direction (power iteration from the all-ones vector, see
   :func:`principal_key`); ``mass``: the unit's L2 mass in + out; the paper's
   ``weight0`` (first incoming weight), ``mean`` and ``median`` (of the incoming
   weights). Any sort flips order when two keys come closer than the noise, so the
   flip rate is ~ (key noise / spread of keys) × units; projecting on the direction
   along which units differ most maximises that spread. Measured on trained digits
   MLPs 64-128-128-10 (``scripts/bench_canonicalize.py``: 8 nets trained with Adam and
   8 with SGD + weight decay; fraction of hidden units whose canonical position
   changes under relative noise 1e-4 / 1e-3 / 1e-2): ``pc`` 0.0010–0.0016 /
   0.017–0.025 / 0.17–0.18; ``mean`` 0.002–0.004 / 0.035–0.037 / 0.28–0.31; ``mass``
   0.003–0.007 / 0.023–0.063 / 0.20–0.39; ``weight0`` 0.003–0.004 / 0.045–0.060 /
   0.34–0.37; ``median`` ~0.02 / 0.20 / 0.73. ``pc`` costs more (a few small batched
   matmuls per layer: about half the throughput of ``mass``).

Each step is equivariant under the symmetries removed before it, so
``canon(g·θ) = canon(θ)`` for every symmetry ``g`` and ``canon(canon(θ)) = canon(θ)``
(up to the solver tolerance, and ties that survive every tie-break: units equal on
their incoming weights and bias whose weights into a hidden layer are the same values
in another order).
"""
