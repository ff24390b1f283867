"""``finserve rollout``: helm upgrade a release, then wait on its RayService until KubeRay has
really rolled it out; roll back to the previous helm revision when it fails.

A package of its own beside the serving core (it imports no Ray and only
:mod:`serving.config` of the core, for the routing rule). Its modules:

- :mod:`rollout.kuberay`: facts of KubeRay's controller and readers of its status;
- :mod:`rollout.states`: the verdicts (Done, Progress, Failed, NotApplied, Unobservable)
  and the exit codes;
- :mod:`rollout.events`, :mod:`rollout.pods`, :mod:`rollout.spec_diff`,
  :mod:`rollout.drift`: what the events, the starting cluster's pods and the running
  RayCluster say;
- :mod:`rollout.decision`: the pure function :func:`rollout.decision.rollout_state`;
- :mod:`rollout.helm` and :mod:`rollout.history`: the helm commands and helm's history;
- :mod:`rollout.kube`: Kubernetes API reads (:class:`rollout.kube.RayServiceWatcher`);
- :mod:`rollout.wait`: polling until settled (:class:`rollout.wait.Waiter`);
- :mod:`rollout.values`: the ``--model-version/--traffic/--shadow`` values edits;
- :mod:`rollout.release`: one release's rollout, rollback and undo
  (:class:`rollout.release.Rollout`);
- :mod:`rollout.options`: :class:`rollout.options.RolloutOptions`, the one declaration of
  the command's options;
- :mod:`rollout.status` and :mod:`rollout.cli`: ``finserve rollout status`` and the typer
  commands.

"Rolled out" follows what KubeRay's RayService controller does (ray-operator v1.6.2, which
our clusters run, and v1.7.0: ``controllers/ray/rayservice_controller.go``): the status
observed the current generation, ``Ready`` is True, ``UpgradeInProgress`` is False, no
pending cluster is named, every active application is RUNNING, for at least
:data:`rollout.kuberay.MIN_SETTLE_S`, and the active RayCluster runs the spec's
``rayClusterConfig`` (KubeRay leaves some changes unapplied:
:func:`rollout.drift.cluster_drift`). ``Ready`` alone stays True during a blue/green
switch, and a stuck pending cluster never fails in KubeRay, so the rollout fails fast on what
cannot recover (a rejected spec, a failed application, pods that cannot start:
:func:`rollout.pods.pod_failure`) and keeps its own deadline for the rest.

helm goes through :class:`rollout.helm.Helm` and the Kubernetes API through a
:class:`rollout.kube.RayServiceWatcher`, so tests give scripted stand-ins. The kubernetes
client is imported lazily.

Exit codes of ``finserve rollout`` (``start``) and ``finserve rollout undo``:

- 0: rolled out (``undo``: back on the earlier revision, settled);
- 1: the rollout failed and was rolled back to the previous revision, which settled;
- 2: failed and not rolled back: helm refused the change, there is no earlier revision, or
  the rollback failed or did not settle;
- 3: not applied to the live cluster: helm and KubeRay took the release, but KubeRay will
  not apply part of its ``rayClusterConfig`` to the running RayCluster; nothing is rolled
  back and the message says what to do;
- 4: the Kubernetes API stayed unreachable until the deadline, refused access (401/403), or
  the RayService is missing: the outcome is unknown and nothing was rolled back.

``finserve rollout status`` exits 0 when rolled out, 1 while rolling out or failed, 3 when
not applied, 4 on an API problem.
"""
