"""The tree utilities of tinygpt.utils: flatten, unflatten and map over nested dicts and lists."""
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
