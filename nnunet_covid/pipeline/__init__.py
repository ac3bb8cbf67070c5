"""Running the product end to end: study grids (:mod:`.study`) and the demo (:mod:`.demo`, its data in
:mod:`.demo_data` and :mod:`.synthetic_ct`)."""
