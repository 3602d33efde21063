"""Grouped kernel pruning (GKP), one method per file named as the method (``srgkp``, ``tmigkp`` and the
ablations ``gkp_greedy``, ``gkp_least_smooth``, ``gkp_l2``, ``gkp_random``), and what they share: kernel
smoothness and snaking (``smoothness``), the beam search (``search``, ``branch_sums``), TMI-GKP's
clusterings (``clustering``), the per-conv driver (``grouped_kernel_method``) and the loop-based
reference of the authors' procedure the tests compare with (``loop_reference``)."""
