"""What both sides of training share and nothing else: the folder lock and the stop signals. It imports nothing
from the rest of `training`, so the data package and the run can both stand on it."""
