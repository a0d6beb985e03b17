"""The kp3d tasks: each module holds one task's reset, reward and success beside its MJCF."""
