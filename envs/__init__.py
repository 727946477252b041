"""Gymnasium and PettingZoo environments over the recsim_mm simulator core."""
