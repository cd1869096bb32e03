"""seqcodec: turn variable-length token sequences into fixed-size, length-prefixed codes and back.

The installed package holds the codec (``seqcodec.model``), the Beam pieces (``seqcodec.transforms``)
and the jobs (``seqcodec.pipeline``); this module is the public face and will re-export what users need.
"""

__version__ = "0.1.0"
