"""What the drain and rotation are made of: the timeline, the listener, the tracked
connections, timers."""
