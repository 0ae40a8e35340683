raise ImportError("No module named 'tensorboardX' (a stand-in for the GPU image, which lacks it)")
