from setuptools import find_packages, setup

setup(
    name="tokvid",
    version="0.1.0",
    description="Phenaki-style text-to-video: causal video tokenizer, block-causal MaskGIT, DeepSpeed training",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tokvid", "tokvid.*"]),
    package_data={"tokvid": ["weights/*/*", "weights/*/*/*"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "vector-quantize-pytorch>=1.20",
        "sentencepiece>=0.2",
        "deepspeed>=0.16",
        "einops>=0.8",
        "numpy>=1.24",
        "av>=12",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "pillow>=9",
    ],
    extras_require={
        "dev": ["pytest>=7", "scikit-video>=1.1.11", "scikit-image>=0.22", "selenium>=4.10"],
        "demo": ["gradio>=5", "gradio_client>=1"],
    },
    entry_points={
        "console_scripts": [
            "tokvid=tokvid.cli:tokvid_entry",
            "tokvid-data=tokvid.cli:data_entry",
            "tokvid-encode=tokvid.cli:encode_entry",
            "tokvid-decode=tokvid.cli:decode_entry",
        ]
    },
)
