"""The experiments of the paper: reproduce (budgets and model specs), Fig. 2, Fig. 3, the numbers of the paper and the report."""
