from .linear import *
from .activation import *
from .loss import *
from .batchnorm import *
