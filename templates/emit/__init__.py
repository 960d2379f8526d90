# The standalone files of `cnncc emit` (a package only so that they ship inside the wheel).
