"""sat_seg_ros: satellite segmentation in aerial images with a fine-tuned SAM, for ROS 2."""

__version__ = '0.1.0'
