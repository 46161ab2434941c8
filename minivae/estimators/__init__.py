"""The estimators of log p(x) and of the bounds, each over one block of datapoints: iwae, ais with hmc, bdmc, localopt (q*), gaps."""
