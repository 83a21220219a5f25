"""Spatial filters: the banks a ConvMixer can freeze, and any k×k convolution as an N×N attention map."""
from .analysis import BankReport, bank_report
from .banks import BANKS, filter_bank
from .conv_matrix import conv_as_attention

__all__ = ["filter_bank", "BANKS", "conv_as_attention", "bank_report", "BankReport"]
