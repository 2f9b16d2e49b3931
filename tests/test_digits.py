from collections import Counter

from PIL import Image

from hvdfast.data.folder import scan


def test_embedded_digits_set(digits_dir):
    train, val = scan(digits_dir)
    assert train.classes == tuple(str(i) for i in range(10))
    assert len(train) + len(val) == 1797 and len(val) == 360
    # stratified: every class has ~20% of its images in val
    tc, vc = Counter(train.labels), Counter(val.labels)
    for c in range(10):
        assert abs(vc[c] / (tc[c] + vc[c]) - 0.2) < 0.02
    assert not set(train.files) & set(val.files)
    with Image.open(train.path(0)) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
