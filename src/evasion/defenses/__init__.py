"""Defences: classification with a reject option, detector subnetworks, adversarial training."""
