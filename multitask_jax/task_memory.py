"""The task KB's memory module (paper section III-A): predefined task instructions, several ways of asking.

`TASK_INSTRUCTIONS` holds, for each predefined task, phrasings in the registers people use: the task's
name, imperative requests, goals ("I want to look at ..."), casual and technical wording. Words that occur
in requests for either task ("pixel", "object", "scene", "photo") appear on both sides, so that no single
shared word decides. `UNSUPPORTED_INSTRUCTIONS` lists image requests the system does not perform
(captioning, counting, editing, ...), grouped a few phrasings per kind; a requirement closer to these than
to any task is out of scope even when it mentions an image.

Written from the task definitions (paper section II-B) and common phrasings, apart from the held-out
requests in tests/multitask_jax/task_requests_heldout.json, which are kept out of this memory.
"""

from __future__ import annotations

from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION

TASK_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    RECONSTRUCTION: (
        "image reconstruction",
        "reconstruct the image",
        "recover the original image at the receiver",
        "transmit the picture so it can be viewed in high quality",
        "restore the photo",
        "send my photo so that the other person can look at it",
        "I want to see the whole picture on my side",
        "display the received photo on a screen",
        "get the image to the receiver with high fidelity",
        "reproduce the input image as accurately as possible",
        "rebuild the image with the same pixel values as the original",
        "reconstruct every pixel of the picture",
        "minimise the pixel error between the sent and the received image",
        "the receiver should output a high-quality version of the photograph",
        "let me look at the picture that was sent",
        "share this photo with a friend",
        "send the image in good quality",
        "rebuild the photograph after transmission",
        "I need the original image back",
        "make the received picture look exactly like the one that was sent",
        "recover the fine details and edges of the photo",
        "photo transmission for viewing",
        "high-resolution image transfer",
        "reproduce the whole scene as a picture, objects and background alike",
        "give me the picture itself, not an analysis of it",
        "a clean copy of the image for the user to look at",
        "the image should arrive looking like the original",
        "regenerate the photo on the receiving device",
        "duplicate the image exactly, down to the last pixel",
    ),
    SEGMENTATION: (
        "image segmentation",
        "segment the image",
        "semantic segmentation of the objects in the image",
        "assign an object class label to every pixel of the picture",
        "outline the objects in the photo",
        "find the regions occupied by people, animals and vehicles",
        "produce a segmentation mask",
        "a class map of the scene",
        "locate each object and mark its exact area",
        "divide the image into object regions and background",
        "pixel-wise classification of the photo",
        "label the regions of the image with their categories",
        "where are the people in this photo, at pixel level",
        "draw the boundaries of every object",
        "mask out each object in the image",
        "show me the area covered by each object",
        "dense labelling of the picture with object categories",
        "find out which areas are road, sky, buildings or people",
        "which object occupies which part of the image",
        "group the pixels into regions that belong to the same object",
        "I don't need the picture, only the objects in it and where they are",
        "mark where the person is in the image",
        "trace the contours of the objects",
        "which region of the image does each thing cover",
        "object masks for the scene",
        "give every pixel the name of the object it shows",
    ),
}

# Image requests outside the two tasks, a few phrasings per kind (one kind per line).
UNSUPPORTED_INSTRUCTIONS: tuple[str, ...] = (
    "image captioning", "summarise the photo in a short text", "alt text for the image",
    "visual question answering", "answer a question about the picture", "what colour is the car in the photo",
    "count the objects in the image", "object counting", "the number of items visible",
    "image classification", "what kind of picture is this", "give the photo one overall label",
    "style transfer", "apply an artistic filter to the image", "turn the picture into a cartoon",
    "edit the picture", "retouch the image", "replace the sky in the photo",
    "image tagging", "add hashtags to the photo", "metadata labels for the picture file",
    "reduce the file size", "zip the folder", "convert the video format",
    "read the text in the image", "optical character recognition", "extract the written words from the photo",
    "face recognition", "recognise whose face this is", "identify the person by name",
    "estimate the depth of the scene", "guess the location of the photo", "image forensics",
)
