"""C compiler flags that several test files build the same specs with. A build is cached by its
source and its flags, so two tests that need the same code share one compile only if they pass
the same tuple: it is named once, here."""

# Baseline x86-64 code (no -march), no FMA contraction: the same bits on every x86-64 machine
# with an IEEE C compiler (the training digests), and -O2's flow analysis behind -Werror (the
# example specs' warnings check in test_network). Warning flags do not change the code.
BASELINE_WERROR = ("-O2", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wextra", "-Werror")
