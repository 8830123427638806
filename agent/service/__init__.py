"""The running device: `app` builds every part and runs the frame loop; `provisioning` turns the boot
partition's file into settings before each start; `sdnotify` talks to systemd (READY, watchdog)."""
