"""The running device. `app` is the composition root: it builds every part, then starts the threads, each in
a module of its own (`frameloop`, `gallerythread`, `commandworker`), which hand work to one another as jobs
(`jobs`); `publisher` and `status` are what the frame loop and the gallery thread tell the broker; `restart`
re-executes the agent in place; `provisioning` turns the boot partition's file into settings before each
start; `sdnotify` talks to systemd (READY, watchdog). Who owns what: docs/architecture.md."""
