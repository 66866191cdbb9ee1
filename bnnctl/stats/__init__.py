"""Statistics of selections of checkpoints: the numbers of Laurent et al. (ICLR 2024) and
Izmailov et al. (ICML 2021), computed from the store.

Everything predictive is *re-evaluated*: the members' weights are read from the store and
run with the arch's batched ``forward`` (MLPs and conv nets alike, in batches of models)
on the exact test data stored with their population (``store.load_data(row.data)``); the
per-model accuracy and NLL are checked against the manifest's recorded ones
(``evaluation.max_abs_diff_vs_manifest``).

Definitions (p_m(x) = softmax output of member m, p̄ = mean over the M members, H =
entropy in nats):

- BMA: the predictive p̄; its accuracy, NLL, ECE (15 bins) and Brier as in
  :mod:`bnnctl.evaluate.metrics`; the curve of those against the number of members
  k = 1, 2, 4, ..., M: the BMA of the first k members of a seeded random order, mean
  and std over 16 orders (one order's curve depends on which members come first).
- Pairwise mutual information of models i, j: the information the model index carries
  about the label under the two-member mixture, I = mean_x [H((p_i+p_j)/2) -
  (H(p_i)+H(p_j))/2] (the Jensen-Shannon divergence); disagreement = fraction of points
  whose argmax differs. All pairs, or ``pairs`` distinct pairs sampled uniformly.
- Comparing selections A and B (Izmailov et al.): agreement = mean_x [argmax p̄_A =
  argmax p̄_B], total variation = ½ mean_x ‖p̄_A − p̄_B‖₁; and MMD² between the two weight
  clouds, unbiased estimate

      MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m−1)) + Σ_{i≠j} k(y_i,y_j)/(n(n−1)) − 2 Σ_ij k(x_i,y_j)/(mn)

  with Gaussian k = exp(−‖x−y‖₂²/(2σ²)) and Laplace k = exp(−‖x−y‖₁/σ) (sklearn's
  ``rbf_kernel`` / ``laplacian_kernel`` conventions) and σ = c × the median pooled
  pairwise distance (L2 resp. L1), c in :data:`BANDWIDTH_MULTIPLES`; before and after
  canonicalisation (canonical rows: ``kind == 'canonical'``, ``parent_id`` -> source),
  per transform: a source canonicalised two ways has two canonical forms, which are
  never pooled.
- Modes: rows a, b are in one mode when ‖a−b‖₂ ≤ tol · sqrt((‖a‖₂²+‖b‖₂²)/2); modes =
  connected components, per transform. L2-mass excess of a source over its scaling
  minimum = (l2_mass_before − l2_mass_after)/l2_mass_after, once per source, from its
  canonical rows at that minimum (scale removed in mode l2).
- OOD (OOD = positive class; every score grows with OOD-ness): max_prob = −max_c p̄,
  entropy = H(p̄), mutual_information = H(p̄) − mean_m H(p_m). AUROC and AUPR (average
  precision) by sklearn.metrics; FPR95 = fraction of in-distribution test points flagged
  at the highest threshold that flags ≥ 95 % of OOD points. The built-in OOD set: for
  features in [0, 1] (digits' pixels) the inverted test images 1 − x; otherwise the test
  points pushed away from the training mean, μ + 3(x − μ).

:func:`compute` returns a JSON-able dict of the stable shape documented in
:data:`.report.JSON_SHAPE` and a :class:`.report.Context` of the arrays behind it (for
:mod:`.plots`).
"""
