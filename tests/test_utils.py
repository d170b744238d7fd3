"""The tree utilities of tinygpt.utils: flatten, unflatten and map over nested dicts and lists."""
import numpy as np
import pytest

from tinygpt.utils import tree_flatten, tree_map, tree_unflatten


def test_tree_flatten_and_unflatten_are_inverse():
    tree = {"a": [1, {"b": 2}], "c": {"d": 3}}
    assert tree_flatten(tree) == [("a.0", 1), ("a.1.b", 2), ("c.d", 3)]
    assert tree_unflatten(tree_flatten(tree)) == tree


def test_tree_map_over_several_trees_passes_their_leaves_together():
    tree = {"a": [1, 2], "b": {"c": 3}}
    steps = {"a": [10, 20], "b": {"c": 30}}
    scales = {"a": [100, 200], "b": {"c": 300}}
    assert tree_map(lambda x, y, z: x + y + z, tree, steps, scales) == {"a": [111, 222], "b": {"c": 333}}
    assert tree_map(lambda x: -x, (1, [2])) == (-1, [-2])


def test_tree_map_leaves_of_the_first_tree_decide_where_to_stop():
    assert tree_map(lambda x, y: (x, y), {"a": 1}, {"a": [2, 3]}) == {"a": (1, [2, 3])}
    assert tree_map(lambda x, y: x + y, [1, 2], [3, 4], is_leaf=lambda x: isinstance(x, list)) == [1, 2, 3, 4]


@pytest.mark.parametrize("other", [{"a": [1]}, {"b": [1, 2]}, {"a": 5}], ids=["shorter", "other key", "leaf"])
def test_tree_map_over_trees_of_another_structure_raises(other):
    with pytest.raises(ValueError, match="tree_map"):
        tree_map(lambda x, y: x, {"a": [1, 2]}, other)


def test_pack_copies_arrays_one_after_another_and_unpack_gives_views_of_them():
    from tinygpt.utils import pack, unpack

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7.0, dtype=np.float32), np.ones((1, 2), np.float32)]
    flat = pack(arrays)
    assert flat.dtype == np.float32 and flat.tolist() == [0, 1, 2, 3, 4, 5, 7, 1, 1]
    views = unpack(flat, [a.shape for a in arrays])
    assert [v.shape for v in views] == [(2, 3), (), (1, 2)]
    assert all(np.array_equal(v, a) for v, a in zip(views, arrays))
    views[0][1, 2] = -1.0  # a view, not a copy
    assert flat[5] == -1.0
    room = np.full(10, 9.0, np.float32)  # into a given array: the rest of it untouched
    assert pack(arrays, room) is room and room.tolist() == [0, 1, 2, 3, 4, 5, 7, 1, 1, 9]
    assert unpack(pack([]), []) == []
