"""The GUIDE method in pure PyTorch: inversion, UFO (Eq. 3), LTU (Eqs. 4-9), evaluation."""
