"""`xinfer-setup fleet`: provision many hosts with Ansible and run an Xinference cluster on them.

Ansible (ansible-core, the `[fleet]` extra) does the hosts over SSH from an ordinary
inventory; Xinference's own supervisor/worker cluster does the serving. Modules:

  inventory   the inventory, read through `ansible-inventory --list`, checked
  ansible     running the shipped playbooks (playbooks/*.yml) and collecting per-host results
  planning    per-host plans by the same pure make_plan, grouped by identical plan and build key
  wheels      what a host needs, as wheels made on the controller (hosts need no index)
  cluster     supervisor/worker settings, auth, the model launch and the chat through the supervisor
  hostctl     the host-side helper the playbooks call (daemons, reachability, auth), stdlib only
  report      the fleet report: one row per host, rendered or as JSON
"""
