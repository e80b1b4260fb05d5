"""LeRobot-format datasets: reading, writing, episode windows, instruction checks, annotations."""
